//! Table changes in batches: up to [`PER_SEND`] requests in one `sendmsg`,
//! the kernel's acknowledgements collected after, matched by sequence
//! number. Programming 10,000 services × 10 destinations is 110,000
//! requests; one round trip each (what `ipvsadm -R` does, line by line)
//! spends most of the time waiting. The kernel handles the messages of one
//! send in order and acknowledges each, a failure included, and goes on
//! with the next — so a batch behaves as the same requests sent one by one.
//!
//! A socket of its own: the acknowledgements of a batch are read in
//! bulk, apart from the one-at-a-time exchanges of [`super::exchange`].

use std::io::Cursor;
use std::sync::atomic::{AtomicU32, Ordering};

use neli::consts::nl::NlmF;
use neli::genl::Genlmsghdr;
use neli::nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder};
use neli::socket::NlSocket;
use neli::types::NlBuffer;
use neli::{FromBytesWithInput, ToBytes};

use super::wire::{Cmd, CmdAttr};
use super::{dest_object, request, DestSpec, IpvsError, ServiceKey, ServiceSpec};

/// Requests per send: their acknowledgements (36 bytes each, a failure's
/// with the request echoed) must fit the socket's receive buffer.
pub const PER_SEND: usize = 64;

/// One change to send: what it is, for errors, and the message.
pub struct Change {
    pub op: &'static str,
    pub object: String,
    pub msg: Result<Genlmsghdr<Cmd, CmdAttr>, String>,
}

impl Change {
    pub fn add_service(spec: &ServiceSpec) -> Change {
        Change {
            op: "add service",
            object: spec.key.to_string(),
            msg: request::new_service(spec),
        }
    }

    pub fn update_service(spec: &ServiceSpec) -> Change {
        Change {
            op: "update service",
            object: spec.key.to_string(),
            msg: request::set_service(spec),
        }
    }

    pub fn delete_service(key: &ServiceKey) -> Change {
        Change {
            op: "delete service",
            object: key.to_string(),
            msg: request::del_service(key),
        }
    }

    pub fn add_dest(key: &ServiceKey, dest: &DestSpec) -> Change {
        Change {
            op: "add destination",
            object: dest_object(key, dest),
            msg: request::new_dest(key, dest),
        }
    }

    pub fn update_dest(key: &ServiceKey, dest: &DestSpec) -> Change {
        Change {
            op: "update destination",
            object: dest_object(key, dest),
            msg: request::set_dest(key, dest),
        }
    }

    pub fn delete_dest(key: &ServiceKey, dest: &DestSpec) -> Change {
        Change {
            op: "delete destination",
            object: dest_object(key, dest),
            msg: request::del_dest(key, dest),
        }
    }
}

pub(super) struct Batcher {
    socket: NlSocket,
    pid: u32,
    seq: AtomicU32,
}

impl Batcher {
    pub(super) fn open() -> Result<Batcher, IpvsError> {
        let (socket, pid) = super::exchange::socket().map_err(IpvsError::Socket)?;
        Ok(Batcher {
            socket,
            pid,
            seq: AtomicU32::new(1),
        })
    }

    /// Sends `changes` to the family `family` and returns each one's outcome, in order.
    pub(super) fn send(&self, family: u16, changes: Vec<Change>) -> Vec<Result<(), IpvsError>> {
        let mut out = Vec::with_capacity(changes.len());
        let mut changes = changes.into_iter().peekable();
        // One receive buffer for every chunk: zeroing 64 KiB per chunk was
        // a tenth of the CPU of programming 100,000 destinations.
        let mut buf = vec![0u8; 1 << 16];
        while changes.peek().is_some() {
            let chunk: Vec<Change> = changes.by_ref().take(PER_SEND).collect();
            out.extend(self.send_chunk(family, chunk, &mut buf));
        }
        out
    }

    fn send_chunk(
        &self,
        family: u16,
        chunk: Vec<Change>,
        acks: &mut [u8],
    ) -> Vec<Result<(), IpvsError>> {
        let first = self.seq.fetch_add(chunk.len() as u32, Ordering::Relaxed);
        let (requests, mut results, labels) = encode(family, self.pid, first, chunk);
        let waiting = results.iter().filter(|r| r.is_none()).count();
        if waiting > 0 {
            if let Err(e) = self
                .socket
                .send(&requests, neli::consts::socket::Msg::empty())
            {
                return fill(results, &labels, &e.to_string());
            }
            if let Err(e) = self.acks(first, &mut results, &labels, waiting, acks) {
                return fill(results, &labels, &e);
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Ok(()))).collect()
    }

    /// Reads acknowledgements until `waiting` requests have one.
    fn acks(
        &self,
        first: u32,
        results: &mut Outcomes,
        labels: &[(&'static str, String)],
        mut waiting: usize,
        buf: &mut [u8],
    ) -> Result<(), String> {
        while waiting > 0 {
            let (n, _) = self
                .socket
                .recv(&mut *buf, neli::consts::socket::Msg::empty())
                .map_err(|e| e.to_string())?;
            let replies: NlBuffer<u16, Genlmsghdr<Cmd, CmdAttr>> =
                NlBuffer::from_bytes_with_input(&mut Cursor::new(&buf[..n]), n)
                    .map_err(|e| format!("reading the kernel's acknowledgements: {e}"))?;
            for reply in replies {
                let i = reply.nl_seq().wrapping_sub(first) as usize;
                let Some(slot) = results.get_mut(i).filter(|s| s.is_none()) else {
                    continue; // not one of ours, or already answered
                };
                let (op, object) = &labels[i];
                *slot = Some(outcome(&reply, op, object));
                waiting -= 1;
            }
        }
        Ok(())
    }
}

/// Each request's outcome so far (`None`: waiting for the kernel).
type Outcomes = Vec<Option<Result<(), IpvsError>>>;

/// One buffer with the requests of `chunk`, numbered from `first`, the
/// outcomes so far and what each request is. A request that could not be
/// built is left out, already failed (no acknowledgement will come).
fn encode(
    family: u16,
    pid: u32,
    first: u32,
    chunk: Vec<Change>,
) -> (Vec<u8>, Outcomes, Vec<(&'static str, String)>) {
    let mut results: Outcomes = Vec::with_capacity(chunk.len());
    let mut labels = Vec::with_capacity(chunk.len());
    let mut buf = Cursor::new(Vec::new());
    for (i, c) in chunk.into_iter().enumerate() {
        let fail = |detail: String| IpvsError::Netlink {
            op: c.op,
            object: c.object.clone(),
            detail,
        };
        let encoded = c.msg.map_err(&fail).and_then(|msg| {
            let hdr = NlmsghdrBuilder::default()
                .nl_type(family)
                .nl_flags(NlmF::REQUEST | NlmF::ACK)
                .nl_pid(pid)
                .nl_seq(first.wrapping_add(i as u32))
                .nl_payload(NlPayload::Payload(msg))
                .build()
                .map_err(|e| fail(e.to_string()))?;
            // Padded to 4 bytes, where the next message starts.
            hdr.to_bytes(&mut buf).map_err(|e| fail(e.to_string()))
        });
        results.push(encoded.err().map(Err));
        labels.push((c.op, c.object));
    }
    (buf.into_inner(), results, labels)
}

fn outcome(
    reply: &Nlmsghdr<u16, Genlmsghdr<Cmd, CmdAttr>>,
    op: &'static str,
    object: &str,
) -> Result<(), IpvsError> {
    match reply.nl_payload() {
        NlPayload::Err(e) => Err(IpvsError::Kernel {
            op,
            object: object.to_string(),
            errno: -*e.error(),
        }),
        _ => Ok(()),
    }
}

/// Every request still unanswered failed with `detail` (the socket broke).
fn fill(
    results: Outcomes,
    labels: &[(&'static str, String)],
    detail: &str,
) -> Vec<Result<(), IpvsError>> {
    results
        .into_iter()
        .zip(labels)
        .map(|(r, (op, object))| {
            r.unwrap_or_else(|| {
                Err(IpvsError::Netlink {
                    op,
                    object: object.clone(),
                    detail: detail.to_string(),
                })
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::wire::IPPROTO_TCP;

    #[test]
    fn a_batch_is_one_buffer_of_numbered_requests_each_asking_for_an_ack() {
        let spec = |last: u8| ServiceSpec {
            key: ServiceKey::Endpoint {
                addr: [10, 0, 0, last].into(),
                port: 80,
                protocol: IPPROTO_TCP,
            },
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
            netmask: u32::MAX,
        };
        let bad = Change {
            op: "add service",
            object: "broken".into(),
            msg: Err("no such thing".into()),
        };
        let changes = vec![
            Change::add_service(&spec(1)),
            bad,
            Change::delete_service(&spec(2).key),
        ];
        let (buf, results, labels) = encode(29, 7, 100, changes);
        assert_eq!(buf.len() % 4, 0);
        let parsed: NlBuffer<u16, Genlmsghdr<Cmd, CmdAttr>> =
            NlBuffer::from_bytes_with_input(&mut Cursor::new(&buf[..]), buf.len()).unwrap();
        let seen: Vec<(u16, u32, u32, Cmd)> = parsed
            .iter()
            .map(|m| {
                let NlPayload::Payload(p) = m.nl_payload() else {
                    panic!("{m:?}")
                };
                assert_eq!(*m.nl_flags(), NlmF::REQUEST | NlmF::ACK);
                (*m.nl_type(), *m.nl_seq(), *m.nl_pid(), *p.cmd())
            })
            .collect();
        assert_eq!(
            seen,
            [(29, 100, 7, Cmd::NewService), (29, 102, 7, Cmd::DelService)],
            "the unbuildable request is not sent, and keeps its number"
        );
        assert!(results[0].is_none() && results[2].is_none());
        let Some(Err(e)) = &results[1] else {
            panic!("{results:?}")
        };
        assert_eq!(e.to_string(), "add service broken: no such thing");
        assert_eq!(labels[2], ("delete service", "TCP 10.0.0.2:80".to_string()));
    }
}
