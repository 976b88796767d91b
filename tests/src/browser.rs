//! A real headless Chromium for the dashboard test, driven over WebDriver
//! (Debian's chromium and chromium-driver): chromedriver on a free
//! loopback port, its JSON protocol spoken with curl.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::proc::Proc;

pub struct Browser {
    base: String,
    session: String,
    _driver: Proc,
}

fn call(method: &str, url: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "60", "-X", method, url]);
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
    }
    let out = c.output().context("running curl")?;
    if !out.status.success() {
        bail!("{method} {url}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{method} {url}: {}", String::from_utf8_lossy(&out.stdout)))?;
    if let Some(e) = v["value"]["error"].as_str() {
        bail!("{method} {url}: {e}: {}", v["value"]["message"]);
    }
    Ok(v["value"].clone())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    pub fn start() -> anyhow::Result<Browser> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Proc(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting chromedriver (Debian package chromium-driver)")?,
        );
        let base = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while call("GET", &format!("{base}/status"), None)
            .map(|v| v["ready"] != true)
            .unwrap_or(true)
        {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // The fabric's own CA is not in Chromium's store; the test checks
        // the certificate chain with curl instead.
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // Root runs the tests: Chromium's sandbox needs --no-sandbox then.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }
        }}});
        let session = call("POST", &format!("{base}/session"), Some(&caps))?;
        let session = session["sessionId"]
            .as_str()
            .context("no session id")?
            .to_string();
        Ok(Browser {
            base,
            session,
            _driver: driver,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}/{path}", self.base, self.session)
    }

    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        call("POST", &self.url("url"), Some(&json!({ "url": url })))?;
        Ok(())
    }

    /// The page's visible text.
    pub fn text(&self) -> anyhow::Result<String> {
        let script = json!({"script": "return document.body.innerText", "args": []});
        let v = call("POST", &self.url("execute/sync"), Some(&script))?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// A screenshot of the page, as PNG, written to `path`.
    pub fn screenshot(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use base64::Engine as _;
        let v = call("GET", &self.url("screenshot"), None)?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("no screenshot")?)?;
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(
            "DELETE",
            &format!("{}/session/{}", self.base, self.session),
            None,
        );
    }
}
