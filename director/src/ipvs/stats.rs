//! Traffic counters the kernel keeps per service and per destination.

use std::io::Cursor;

use neli::genl::Nlattr;
use neli::types::{Buffer, GenlBuffer};
use neli::FromBytesWithInput;

use super::wire::*;

/// Totals since the entry was created, and rates over the kernel's last 2 s estimate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub conns: u64,
    pub in_pkts: u64,
    pub out_pkts: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub cps: u64,
    pub in_pps: u64,
    pub out_pps: u64,
    pub in_bps: u64,
    pub out_bps: u64,
}

impl Stats {
    /// Reads a `*_STATS64` nest (all u64), or else a `*_STATS` nest (u32 counters, u64 bytes).
    pub(super) fn parse_nested(stats64: Option<&[u8]>, stats: Option<&[u8]>) -> Stats {
        let (bytes, wide) = match (stats64, stats) {
            (Some(b), _) => (b, true),
            (None, Some(b)) => (b, false),
            (None, None) => return Stats::default(),
        };
        let Ok(attrs) = GenlBuffer::<StatsAttr, Buffer>::from_bytes_with_input(
            &mut Cursor::new(bytes),
            bytes.len(),
        ) else {
            return Stats::default();
        };
        let get = |t: StatsAttr| -> u64 {
            let found: Option<&Nlattr<StatsAttr, Buffer>> =
                attrs.iter().find(|a| *a.nla_type().nla_type() == t);
            found
                .map(|a| a.nla_payload().as_ref())
                .and_then(|p| {
                    let bytes_field = matches!(t, StatsAttr::Inbytes | StatsAttr::Outbytes);
                    if wide || bytes_field {
                        u64_ne(p)
                    } else {
                        u32_ne(p).map(u64::from)
                    }
                })
                .unwrap_or(0)
        };
        Stats {
            conns: get(StatsAttr::Conns),
            in_pkts: get(StatsAttr::Inpkts),
            out_pkts: get(StatsAttr::Outpkts),
            in_bytes: get(StatsAttr::Inbytes),
            out_bytes: get(StatsAttr::Outbytes),
            cps: get(StatsAttr::Cps),
            in_pps: get(StatsAttr::Inpps),
            out_pps: get(StatsAttr::Outpps),
            in_bps: get(StatsAttr::Inbps),
            out_bps: get(StatsAttr::Outbps),
        }
    }
}
