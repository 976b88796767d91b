//! nf_tables set elements over netlink: adds, deletes and flushes in one
//! kernel transaction (an nfnetlink batch), from a socket kept open.
//!
//! Why not the `nft` tool for this: the director renews its VIP fence
//! (`lb_director::fence`) every third of a lease, and one `nft` process
//! costs about 15 ms natively and 130 ms under the VM's emulated CPU,
//! whatever the script — most of it starting the process and reading the
//! ruleset. A batch of a few set elements costs the kernel's share only.
//! The tables, chains and sets themselves are still made by `nft` (rare,
//! and its language says what they are). Why not a crate: those that exist
//! either run `nft` themselves or bind the C libnftnl; these are two
//! message kinds.
//!
//! The messages follow `linux/netfilter/nf_tables.h`: a batch is
//! `NFNL_MSG_BATCH_BEGIN`, then `NFT_MSG_NEWSETELEM` / `NFT_MSG_DELSETELEM`
//! each naming its table and set and carrying a nested element list (a
//! `DELSETELEM` without one flushes the set), then `NFNL_MSG_BATCH_END`.
//! The kernel applies all of it or none.

use std::time::Duration;

use std::io::Read;

use socket2::{Domain, Protocol, Socket, Type};

use crate::NetError;

// Attribute numbers from linux/netfilter/nf_tables.h (not in the libc crate).
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// Elements per message: keeps each message far below the 64 KiB an
/// attribute length can say, whatever the keys.
const PER_MESSAGE: usize = 256;

/// A table's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    Arp,
    Inet,
}

impl Family {
    fn proto(self) -> u8 {
        let p = match self {
            Family::Arp => libc::NFPROTO_ARP,
            Family::Inet => libc::NFPROTO_INET,
        };
        p as u8
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Arp => "arp",
            Family::Inet => "inet",
        }
    }
}

/// A set (or map) by family, table and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SetRef<'a> {
    pub family: Family,
    pub table: &'a str,
    pub set: &'a str,
}

impl std::fmt::Display for SetRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.family.name(), self.table, self.set)
    }
}

/// One element: its key as the set stores it (network byte order), with a
/// timeout (the set needs `flags timeout`) and, in a verdict map, the
/// chain it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<u8>,
    pub timeout: Option<Duration>,
    pub goto: Option<String>,
}

impl Element {
    pub fn key(key: impl Into<Vec<u8>>) -> Element {
        Element {
            key: key.into(),
            timeout: None,
            goto: None,
        }
    }
}

/// One change to a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOp<'a> {
    /// Every element out.
    Flush(SetRef<'a>),
    Add(SetRef<'a>, Vec<Element>),
    /// The elements with these keys out.
    Delete(SetRef<'a>, Vec<Vec<u8>>),
}

/// A netlink attribute: type, then the payload, padded to 4 bytes.
fn attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A nested attribute whose payload `inner` writes.
fn nested(out: &mut Vec<u8>, ty: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let mut body = Vec::new();
    inner(&mut body);
    attr(out, ty | libc::NLA_F_NESTED as u16, &body);
}

fn cstr(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

/// A message: `nlmsghdr`, `nfgenmsg`, attributes.
fn message(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    m.push(family);
    m.push(libc::NFNETLINK_V0 as u8);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

fn element(out: &mut Vec<u8>, e: &Element) {
    nested(out, NFTA_LIST_ELEM, |el| {
        nested(el, NFTA_SET_ELEM_KEY, |k| attr(k, NFTA_DATA_VALUE, &e.key));
        if let Some(t) = e.timeout {
            let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
            attr(el, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
        }
        if let Some(chain) = &e.goto {
            nested(el, NFTA_SET_ELEM_DATA, |d| {
                nested(d, NFTA_DATA_VERDICT, |v| {
                    attr(v, NFTA_VERDICT_CODE, &libc::NFT_GOTO.to_be_bytes());
                    attr(v, NFTA_VERDICT_CHAIN, &cstr(chain));
                })
            })
        }
    });
}

/// The batch for `ops`, its messages numbered from `seq`; each op's
/// messages' sequence numbers, to name the op an error came from.
fn batch(ops: &[SetOp<'_>], seq: u32) -> (Vec<u8>, Vec<(u32, usize)>) {
    const REQUEST: u16 = libc::NLM_F_REQUEST as u16;
    const ACK: u16 = libc::NLM_F_ACK as u16;
    const CREATE: u16 = libc::NLM_F_CREATE as u16;
    let subsys = (libc::NFNL_SUBSYS_NFTABLES as u16) << 8;
    let (new, del) = (
        subsys | libc::NFT_MSG_NEWSETELEM as u16,
        subsys | libc::NFT_MSG_DELSETELEM as u16,
    );
    let mut out = message(
        libc::NFNL_MSG_BATCH_BEGIN as u16,
        REQUEST,
        seq,
        libc::AF_UNSPEC as u8,
        libc::NFNL_SUBSYS_NFTABLES as u16,
        &[],
    );
    let mut next = seq;
    let mut acked = Vec::new();
    let head = |set: &SetRef<'_>| {
        let mut a = Vec::new();
        attr(&mut a, NFTA_SET_ELEM_LIST_TABLE, &cstr(set.table));
        attr(&mut a, NFTA_SET_ELEM_LIST_SET, &cstr(set.set));
        a
    };
    for (i, op) in ops.iter().enumerate() {
        let mut push = |ty, flags, set: &SetRef<'_>, attrs: Vec<u8>| {
            next = next.wrapping_add(1);
            out.extend(message(ty, flags, next, set.family.proto(), 0, &attrs));
            acked.push((next, i));
        };
        let keys: Vec<Element>;
        let (ty, flags, set, elements) = match op {
            SetOp::Flush(set) => {
                push(del, REQUEST | ACK, set, head(set));
                continue;
            }
            SetOp::Add(set, elements) => (new, REQUEST | ACK | CREATE, set, elements),
            SetOp::Delete(set, k) => {
                keys = k.iter().map(|k| Element::key(k.clone())).collect();
                (del, REQUEST | ACK, set, &keys)
            }
        };
        for chunk in elements.chunks(PER_MESSAGE) {
            let mut a = head(set);
            nested(&mut a, NFTA_SET_ELEM_LIST_ELEMENTS, |l| {
                chunk.iter().for_each(|e| element(l, e))
            });
            push(ty, flags, set, a);
        }
    }
    out.extend(message(
        libc::NFNL_MSG_BATCH_END as u16,
        REQUEST,
        next.wrapping_add(1),
        libc::AF_UNSPEC as u8,
        libc::NFNL_SUBSYS_NFTABLES as u16,
        &[],
    ));
    (out, acked)
}

/// An nfnetlink socket in the network namespace of the thread that opened it.
pub struct Nftables {
    /// Never connected nor bound: a netlink datagram without an address
    /// goes to the kernel, and the first send binds a port id.
    socket: Socket,
    seq: u32,
}

impl std::fmt::Debug for Nftables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nftables").field("seq", &self.seq).finish()
    }
}

impl Nftables {
    pub fn open() -> Result<Nftables, NetError> {
        let open = || {
            let protocol = Protocol::from(libc::NETLINK_NETFILTER);
            let socket = Socket::new(Domain::from(libc::AF_NETLINK), Type::RAW, Some(protocol))?;
            // Answers are read once the batch is sent, never waited for.
            socket.set_nonblocking(true)?;
            socket.set_recv_buffer_size(1 << 18)?;
            Ok::<_, std::io::Error>(socket)
        };
        let socket = open().map_err(|e| NetError::Socket(format!("nfnetlink: {e}")))?;
        Ok(Nftables { socket, seq: 1 })
    }

    /// Applies `ops` as one transaction: all of them, or none and an error
    /// naming the first set the kernel refused.
    pub fn commit(&mut self, ops: &[SetOp<'_>]) -> Result<(), NetError> {
        if ops.is_empty() {
            return Ok(());
        }
        let (bytes, acked) = batch(ops, self.seq);
        self.seq = self.seq.wrapping_add(acked.len() as u32 + 2);
        let fail = |detail: String| NetError::Netlink {
            op: "nf_tables batch",
            object: format!("{} set operations", ops.len()),
            detail,
        };
        // The whole batch goes in one datagram, which must fit the socket's
        // send buffer: raised to the batch (the kernel caps it at twice
        // net.core.wmem_max, 416 KiB by default — a full rewrite of some
        // 8,000 VIPs; a renewal is a few hundred bytes).
        if bytes.len() + 64 > self.socket.send_buffer_size().unwrap_or(0) {
            let _ = self.socket.set_send_buffer_size(bytes.len() + 64);
        }
        self.socket
            .send(&bytes)
            .map_err(|e| fail(format!("sending {} bytes: {e}", bytes.len())))?;
        // The kernel handles the batch within the send: every answer is
        // queued by now, one per message (an acknowledgement or an error).
        let mut pending: std::collections::BTreeMap<u32, usize> = acked.into_iter().collect();
        let mut first_error: Option<NetError> = None;
        let mut buf = vec![0u8; 1 << 16];
        while !pending.is_empty() {
            let n = (&self.socket)
                .read(&mut buf)
                .map_err(|e| fail(format!("reading the acknowledgements: {e}")))?;
            for (seq, errno) in acks(&buf[..n]) {
                let Some(i) = pending.remove(&seq) else {
                    // The batch's own begin or end was refused.
                    if errno != 0 {
                        return Err(fail(std::io::Error::from_raw_os_error(errno).to_string()));
                    }
                    continue;
                };
                if errno != 0 && first_error.is_none() {
                    let (what, set) = match &ops[i] {
                        SetOp::Flush(s) => ("flush set", s),
                        SetOp::Add(s, _) => ("add elements to", s),
                        SetOp::Delete(s, _) => ("delete elements from", s),
                    };
                    first_error = Some(NetError::Kernel {
                        op: what,
                        object: set.to_string(),
                        errno,
                    });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The `(sequence number, errno)` of each acknowledgement or error in `buf`.
fn acks(mut buf: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let u32_at = |b: &[u8], at: usize| {
            b.get(at..at + 4)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map_or(0, u32::from_ne_bytes)
        };
        let len = u32_at(buf, 0) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32_at(buf, 8);
        if ty == libc::NLMSG_ERROR as u16 && buf.len() >= 20 {
            // The payload starts with the (negative) errno; 0 is an ack.
            // An error quotes the request after it, which a short read may
            // have cut: the errno is all that is needed.
            out.push((seq, -(u32_at(buf, 16) as i32)));
        }
        if len < 16 {
            break;
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_framed_and_each_message_acknowledged() {
        let set = SetRef {
            family: Family::Inet,
            table: "t",
            set: "s",
        };
        let many: Vec<Element> = (0..300u32).map(|i| Element::key(i.to_be_bytes())).collect();
        let ops = [SetOp::Flush(set), SetOp::Add(set, many)];
        let (bytes, acked) = batch(&ops, 41);
        // Flush, then 300 elements in two messages.
        assert_eq!(acked, vec![(42, 0), (43, 1), (44, 1)]);
        let mut at = 0;
        let mut types = Vec::new();
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            types.push(u16::from_ne_bytes([bytes[at + 4], bytes[at + 5]]));
            at += len;
        }
        assert_eq!(at, bytes.len(), "messages end to end");
        assert_eq!(types, vec![0x10, 0x0a0e, 0x0a0c, 0x0a0c, 0x11]);
    }
}
