//! One request at a time on a socket of its own, its replies read in the
//! calling thread.
//!
//! neli's router, which the reads and single changes went through before,
//! reads every reply on a thread of its own, parses it, hands it over a
//! channel and the caller parses it again. Under the VM's emulated CPU a
//! read of one service's destinations took 1.0–1.3 ms that way, and 6–9 ms
//! when the router's thread had to wait for a CPU; a director reads a
//! service and its destinations back for every change it programs. Here
//! the caller sends, then receives into a buffer it keeps (not zeroed
//! again for each receive), and parses each reply once.

use std::io::Cursor;

use neli::consts::genl::NlAttrType;
use neli::consts::nl::{NlmF, Nlmsg};
use neli::consts::socket::{Msg, NlFamily};
use neli::genl::Genlmsghdr;
use neli::nl::{NlPayload, NlmsghdrBuilder};
use neli::socket::NlSocket;
use neli::types::NlBuffer;
use neli::utils::Groups;
use neli::{FromBytesWithInput, ToBytes};

use super::wire::Cmd;

/// Large enough for one datagram of a dump: the kernel fills each up to
/// the size the reader's buffers have (32 KiB at most).
const BUFFER: usize = 1 << 16;

/// Why an exchange failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// The kernel refused the request with this errno.
    Kernel(i32),
    /// The socket or the encoding failed.
    Netlink(String),
}

pub(super) struct Exchanger {
    socket: NlSocket,
    pid: u32,
    seq: u32,
    buf: Vec<u8>,
}

/// A blocking generic netlink socket of its own, and its port id (what
/// the kernel's replies are addressed to).
pub(super) fn socket() -> Result<(NlSocket, u32), String> {
    let socket =
        NlSocket::connect(NlFamily::Generic, None, Groups::empty()).map_err(|e| e.to_string())?;
    socket.block().map_err(|e| e.to_string())?;
    let pid = socket.pid().map_err(|e| e.to_string())?;
    Ok((socket, pid))
}

impl Exchanger {
    pub(super) fn open() -> Result<Exchanger, String> {
        let (socket, pid) = socket()?;
        Ok(Exchanger {
            socket,
            pid,
            seq: 0,
            buf: vec![0; BUFFER],
        })
    }

    /// Sends `msg` to `family` with `flags` (a request, always) and returns
    /// the payloads of its replies: until the end of a dump (`DUMP`), the
    /// acknowledgement (`ACK`), or else the one reply.
    pub(super) fn exchange<T: NlAttrType>(
        &mut self,
        family: u16,
        flags: NlmF,
        msg: Genlmsghdr<Cmd, T>,
    ) -> Result<Vec<Genlmsghdr<Cmd, T>>, Failure> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let request = NlmsghdrBuilder::default()
            .nl_type(family)
            .nl_flags(NlmF::REQUEST | flags)
            .nl_pid(self.pid)
            .nl_seq(seq)
            .nl_payload(NlPayload::Payload(msg))
            .build()
            .map_err(|e| Failure::Netlink(e.to_string()))?;
        let mut bytes = Cursor::new(Vec::new());
        request
            .to_bytes(&mut bytes)
            .map_err(|e| Failure::Netlink(e.to_string()))?;
        self.socket
            .send(bytes.get_ref(), Msg::empty())
            .map_err(|e| Failure::Netlink(e.to_string()))?;
        let mut out = Vec::new();
        loop {
            let (n, _) = self
                .socket
                .recv(&mut self.buf[..], Msg::empty())
                .map_err(|e| Failure::Netlink(e.to_string()))?;
            let replies: NlBuffer<u16, Genlmsghdr<Cmd, T>> =
                NlBuffer::from_bytes_with_input(&mut Cursor::new(&self.buf[..n]), n)
                    .map_err(|e| Failure::Netlink(format!("reading the kernel's reply: {e}")))?;
            for reply in replies {
                // What is left of an earlier exchange that failed half-way.
                if *reply.nl_seq() != seq {
                    continue;
                }
                let done = *reply.nl_type() == u16::from(Nlmsg::Done);
                match reply.nl_payload() {
                    NlPayload::Err(e) => return Err(Failure::Kernel(-*e.error())),
                    NlPayload::DumpExtAck(e) if *e.error() != 0 => {
                        return Err(Failure::Kernel(-*e.error()))
                    }
                    NlPayload::Ack(_) => return Ok(out),
                    _ if done => return Ok(out),
                    NlPayload::Payload(p) => {
                        out.push(p.clone());
                        let more = reply.nl_flags().contains(NlmF::MULTI);
                        if !more && !flags.contains(NlmF::ACK) {
                            return Ok(out);
                        }
                    }
                    NlPayload::DumpExtAck(_) | NlPayload::Empty => {}
                }
            }
        }
    }
}
