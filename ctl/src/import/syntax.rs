//! The forgiving block syntax keepalived.conf and lvs.cf share: words,
//! `{ … }` blocks, comments from `#` or `!` to the end of the line.
//!
//! A directive's arguments run to the end of its line, to a brace, or to the
//! next word the format knows as a directive; that last rule is what lets a
//! whole block written on one line read like the usual layout.

use super::ImportError;

/// Deeper nesting than any real file has; it bounds the recursion.
const MAX_DEPTH: usize = 16;

/// One word with the line it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) text: String,
    pub(crate) line: usize,
    /// Written in quotes: never a brace or a keyword.
    pub(crate) quoted: bool,
}

/// A directive: `key args…` with an optional `{ … }` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) key: String,
    pub(crate) args: Vec<String>,
    pub(crate) line: usize,
    pub(crate) block: Option<Vec<Node>>,
}

impl Node {
    /// `key arg arg`, as written, for messages.
    pub(crate) fn directive(&self) -> String {
        if self.args.is_empty() {
            self.key.clone()
        } else {
            format!("{} {}", self.key, self.args.join(" "))
        }
    }

    pub(crate) fn children(&self) -> &[Node] {
        self.block.as_deref().unwrap_or(&[])
    }

    /// This directive is wrong in `file`.
    pub(crate) fn error(&self, file: &str, message: impl Into<String>) -> ImportError {
        ImportError {
            file: file.to_string(),
            line: self.line,
            directive: self.directive(),
            message: message.into(),
        }
    }

    /// Argument `index`, which must be there.
    pub(crate) fn arg(&self, file: &str, index: usize) -> Result<&str, ImportError> {
        self.args
            .get(index)
            .map(String::as_str)
            .ok_or_else(|| self.error(file, "needs a value"))
    }

    /// Argument `index` as a whole number.
    pub(crate) fn number(&self, file: &str, index: usize) -> Result<u32, ImportError> {
        let text = self.arg(file, index)?;
        text.parse()
            .map_err(|_| self.error(file, format!("{text:?} is not a whole number")))
    }
}

/// Splits text into tokens. `equals`: `=` separates words and is dropped
/// (lvs.cf's `key = value`). Comments become `comments` (line, text).
pub(crate) fn lex(text: &str, equals: bool) -> (Vec<Token>, Vec<(usize, String)>) {
    let mut tokens = Vec::new();
    let mut comments = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let mut chars = raw.trim_end_matches('\r').char_indices().peekable();
        let mut word = String::new();
        let flush = |word: &mut String, tokens: &mut Vec<Token>| {
            if !word.is_empty() {
                tokens.push(Token {
                    text: std::mem::take(word),
                    line,
                    quoted: false,
                });
            }
        };
        while let Some((at, c)) = chars.next() {
            match c {
                '#' | '!' => {
                    flush(&mut word, &mut tokens);
                    comments.push((line, raw[at + 1..].trim().to_string()));
                    break;
                }
                '"' | '\'' if word.is_empty() => {
                    // A quote runs to its match; an unmatched one to the end
                    // of the line (hand-edited files have those).
                    let mut quoted = String::new();
                    for (_, q) in chars.by_ref() {
                        if q == c {
                            break;
                        }
                        quoted.push(q);
                    }
                    tokens.push(Token {
                        text: quoted.trim_end_matches('\r').to_string(),
                        line,
                        quoted: true,
                    });
                }
                '{' | '}' => {
                    flush(&mut word, &mut tokens);
                    tokens.push(Token {
                        text: c.to_string(),
                        line,
                        quoted: false,
                    });
                }
                '=' if equals => flush(&mut word, &mut tokens),
                c if c.is_whitespace() => flush(&mut word, &mut tokens),
                c => word.push(c),
            }
        }
        flush(&mut word, &mut tokens);
    }
    (tokens, comments)
}

/// Builds the directive tree. `keyword` tells which words start a directive
/// (so arguments stop there even on the same line).
pub(crate) fn parse(
    file: &str,
    tokens: &[Token],
    keyword: &dyn Fn(&str) -> bool,
) -> Result<Vec<Node>, ImportError> {
    let mut pos = 0;
    let nodes = block(file, tokens, &mut pos, keyword, None, 0)?;
    Ok(nodes)
}

fn block(
    file: &str,
    tokens: &[Token],
    pos: &mut usize,
    keyword: &dyn Fn(&str) -> bool,
    opened_by: Option<&Node>,
    depth: usize,
) -> Result<Vec<Node>, ImportError> {
    if let (Some(n), true) = (opened_by, depth > MAX_DEPTH) {
        return Err(ImportError {
            file: file.into(),
            line: n.line,
            directive: n.directive(),
            message: format!("blocks nest deeper than {MAX_DEPTH}"),
        });
    }
    let mut nodes = Vec::new();
    while let Some(t) = tokens.get(*pos) {
        *pos += 1;
        if !t.quoted && t.text == "}" {
            return match opened_by {
                Some(_) => Ok(nodes),
                None => Err(ImportError {
                    file: file.into(),
                    line: t.line,
                    directive: "}".into(),
                    message: "closes a block that was never opened".into(),
                }),
            };
        }
        if !t.quoted && t.text == "{" {
            // A block with no directive before it: read it and keep its
            // contents at this level rather than refuse the file.
            let anon = Node {
                key: String::new(),
                args: Vec::new(),
                line: t.line,
                block: None,
            };
            let inner = block(file, tokens, pos, keyword, Some(&anon), depth + 1)?;
            nodes.extend(inner);
            continue;
        }
        let mut node = Node {
            key: t.text.clone(),
            args: Vec::new(),
            line: t.line,
            block: None,
        };
        while let Some(a) = tokens.get(*pos) {
            let brace = !a.quoted && (a.text == "{" || a.text == "}");
            if brace || a.line != t.line || (!a.quoted && keyword(&a.text)) {
                break;
            }
            node.args.push(a.text.clone());
            *pos += 1;
        }
        if tokens.get(*pos).is_some_and(|a| !a.quoted && a.text == "{") {
            *pos += 1;
            node.block = Some(block(file, tokens, pos, keyword, Some(&node), depth + 1)?);
        }
        nodes.push(node);
    }
    match opened_by {
        None => Ok(nodes),
        Some(n) => Err(ImportError {
            file: file.into(),
            line: n.line,
            directive: n.directive(),
            message: "its block is never closed (missing })".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Vec<Node> {
        let (t, _) = lex(text, false);
        parse("f", &t, &|w| matches!(w, "a" | "b" | "c")).unwrap()
    }

    #[test]
    fn layouts_read_the_same() {
        let usual = tree("a 1 2 {\n  b 3\n  c \"x y\"\n}\n");
        let squeezed = tree("a 1 2{ b 3 c \"x y\" }");
        let crlf = tree("a\t1 2 {\r\n b 3 # note\r\n c 'x y'\r\n}\r\n");
        assert_eq!(usual[0].args, ["1", "2"]);
        assert_eq!(usual[0].children()[1].args, ["x y"]);
        let shape = |n: &[Node]| -> Vec<(String, Vec<String>)> {
            n[0].children()
                .iter()
                .map(|c| (c.key.clone(), c.args.clone()))
                .collect()
        };
        assert_eq!(shape(&usual), shape(&squeezed));
        assert_eq!(shape(&usual), shape(&crlf));
    }

    #[test]
    fn brace_errors_name_the_line() {
        let (t, _) = lex("a {\n b 1\n", false);
        let e = parse("f.conf", &t, &|_| false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "f.conf:1: a: its block is never closed (missing })"
        );
        let (t, _) = lex("a 1\n}\n", false);
        let e = parse("f.conf", &t, &|_| false).unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn comments_and_equals() {
        let (t, c) = lex("x = 1 ! bang\n# hash\ny=\"a=b\"", true);
        let words: Vec<&str> = t.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(words, ["x", "1", "y", "a=b"]);
        assert_eq!(c, [(1, "bang".to_string()), (2, "hash".to_string())]);
    }
}
