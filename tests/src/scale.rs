//! Generated tables for the scale tests and benchmarks (issue #16).

/// An `ipvsadm -Sn` table, one line per entry: `n` TCP services, ten per
/// VIP (ports 8000–8009), each with `realservers` direct-routing
/// realservers of weight 1. `lbctl import ipvsadm` names the first service
/// `vs-10.100.0.0-8000-tcp`.
pub fn ipvsadm_table(n: usize, realservers: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n * (1 + realservers));
    for i in 0..n {
        let vip = format!(
            "10.{}.{}.{}",
            100 + i / 10 / 65_536,
            i / 10 / 256 % 256,
            i / 10 % 256
        );
        let port = 8000 + i % 10;
        out.push(format!("-A -t {vip}:{port} -s wlc"));
        for r in 0..realservers {
            let rs = format!("192.168.{r}.{}", 1 + i % 250);
            out.push(format!("-a -t {vip}:{port} -r {rs}:{port} -g -w 1"));
        }
    }
    out
}
