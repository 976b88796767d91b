//! Proof of a real IPVS kernel: the generic netlink family resolves and
//! answers IPVS_CMD_GET_INFO, and /proc agrees.

use lb_director::ipvs::Ipvs;

#[test]
fn generic_netlink_family_ipvs_reports_version_and_table_size() {
    if !super::in_vm() {
        return;
    }
    let ipvs = Ipvs::open().expect("resolving generic netlink family IPVS");
    let info = ipvs.info().expect("IPVS_CMD_GET_INFO");
    assert_eq!(info.version.0, 1, "{info:?}");
    assert!(
        info.conn_tab_size.is_power_of_two() && info.conn_tab_size >= 256,
        "{info:?}"
    );
    // The kernel's own text view says the same.
    let proc = std::fs::read_to_string("/proc/net/ip_vs").expect("/proc/net/ip_vs");
    let (a, b, c) = info.version;
    let header = format!(
        "IP Virtual Server version {a}.{b}.{c} (size={})",
        info.conn_tab_size
    );
    assert!(proc.starts_with(&header), "{proc:?} vs {header:?}");
    println!("{header}");
}
