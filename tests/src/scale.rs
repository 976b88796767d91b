//! Generated tables for the scale tests and benchmarks (issue #16).

/// An `ipvsadm -Sn` table, one line per entry: `n` TCP services, ten per
/// VIP (ports 8000–8009), each with `realservers` direct-routing
/// realservers of weight 1. `lbctl import ipvsadm` names the first service
/// `vs-10.100.0.0-8000-tcp`.
pub fn ipvsadm_table(n: usize, realservers: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n * (1 + realservers));
    for i in 0..n {
        let (vaddr, rs) = (service_address(i), |r| realserver_address(i, r));
        out.push(format!("-A -t {vaddr} -s wlc"));
        out.extend((0..realservers).map(|r| format!("-a -t {vaddr} -r {} -g -w 1", rs(r))));
    }
    out
}

/// The `VIP:port` of the table's `i`-th service.
pub fn service_address(i: usize) -> String {
    let vip = format!(
        "10.{}.{}.{}",
        100 + i / 10 / 65_536,
        i / 10 / 256 % 256,
        i / 10 % 256
    );
    format!("{vip}:{}", 8000 + i % 10)
}

/// The `address:port` of the `i`-th service's `r`-th realserver.
pub fn realserver_address(i: usize, r: usize) -> String {
    format!("192.168.{r}.{}:{}", 1 + i % 250, 8000 + i % 10)
}
