//! lbctl's command line.

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "lbctl",
    version,
    about = "Operate an lbfabric load-balancing fabric",
    after_help = "Examples:\n  lbctl service create web --vip 10.10.1.30:80/tcp --scheduler wlc --mode nat --persistence 30\n  lbctl realserver add web 192.168.10.11:8080 --weight 2\n  lbctl service list -o json\n  lbctl --controller 10.0.0.1:7070,10.0.0.2:7070 cluster status"
)]
pub struct Cli {
    /// Controller address(es), comma-separated; lbctl follows leader redirects.
    #[arg(
        long,
        global = true,
        env = "LB_CONTROLLER",
        default_value = "127.0.0.1:7070"
    )]
    pub controller: lb_proto::client::Controllers,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Give up after this many seconds, waiting for the answer included
    /// (and redirects and elections); a controller cuts a call off at 30 s.
    #[arg(long, global = true, default_value_t = 35)]
    pub timeout: u64,
    /// TLS with the files of a directory: ca.pem, admin.pem, admin.key (a
    /// controller's <data-dir>/pki, or what `lbctl pki admin-cert` wrote).
    #[arg(long, global = true, env = "LB_CREDENTIALS", conflicts_with = "ca")]
    pub credentials: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tls: lb_proto::process::TlsFlags,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

// Parsed once per process; boxing the large variants buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Virtual services (VIP:port/proto or fwmark).
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Realservers of a service.
    #[command(subcommand)]
    Realserver(RealserverCmd),
    /// Director agents as the controller leader sees them.
    #[command(subcommand)]
    Director(DirectorCmd),
    /// Controller cluster membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The fabric at a glance, like `ipvsadm -Ln` across every director: each service with
    /// the director answering for it (owner@epoch), each realserver with its forwarding
    /// method, weight, health, state and connections; then who holds each VIP.
    #[command(
        after_help = "Examples:\n  lbctl status\n  lbctl status --stats\n  lbctl status --rate\n  lbctl status --vip 10.10.1.30\n  lbctl status -o json"
    )]
    Status {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Only the services on this VIP, and only this VIP.
        #[arg(long)]
        vip: Option<String>,
        /// Totals (connections, packets, bytes) instead of active/inactive connections.
        #[arg(long, conflicts_with = "rate")]
        stats: bool,
        /// Rates per second (the kernel's 2 s estimator).
        #[arg(long)]
        rate: bool,
    },
    /// Print configuration changes as they are committed, one line each.
    #[command(after_help = "Examples:\n  lbctl watch\n  lbctl watch --from-revision 1 -o json")]
    Watch {
        /// First revision to print (0 = only new changes). Resume with the last seen + 1.
        #[arg(long, default_value_t = 0)]
        from_revision: u64,
    },
    /// Bring services over from keepalived.conf, Piranha's lvs.cf or `ipvsadm --save`,
    /// all at once or not at all.
    #[command(
        after_help = "Every directive that cannot be carried over is printed with its file and line.\nSeveral keepalived files (one per director) merge; their vrrp_instance priorities\nbecome the services' preferred directors (named by global_defs router_id).\n\nExamples:\n  lbctl import keepalived /etc/keepalived/keepalived.conf --dry-run\n  lbctl import keepalived lb1/keepalived.conf lb2/keepalived.conf\n  lbctl import piranha /etc/sysconfig/ha/lvs.cf\n  ipvsadm -Sn > table.txt && lbctl import ipvsadm table.txt --replace"
    )]
    Import {
        #[arg(value_enum)]
        format: crate::import::Format,
        /// Files to read (`-` = standard input).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// Print the services it would create and what it cannot map; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replace services of the same name instead of refusing the import.
        #[arg(long)]
        replace: bool,
    },
    /// Write the fabric's services as keepalived.conf or `ipvsadm -Sn` text
    /// (to diff, or to roll back); what the format cannot say goes to stderr.
    #[command(
        after_help = "Examples:\n  lbctl export keepalived > keepalived.conf\n  lbctl export keepalived --director lb1\n  lbctl export ipvsadm | diff - <(ipvsadm -Sn)"
    )]
    Export {
        #[arg(value_enum)]
        format: ExportFormat,
        /// keepalived: write this director's file (router_id, and a vrrp_instance
        /// for each VIP that prefers it).
        #[arg(long)]
        director: Option<String>,
    },
    /// Directors and realserver agents as holders of certificates.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Named admin identities: certificates for lbctl from the controllers'
    /// CA, listed and revocable like nodes.
    #[command(subcommand)]
    Admin(AdminCmd),
    /// Join tokens: how a new director or realserver agent gets its
    /// certificate (`--join-token`), pinning the fabric's CA.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Certificates from the fabric's CA, made locally where its key is
    /// (a bootstrapping controller's <data-dir>/pki).
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  lbctl completion bash > /etc/bash_completion.d/lbctl\n  lbctl completion zsh > \"${fpath[1]}/_lbctl\"\n  lbctl completion fish > ~/.config/fish/completions/lbctl.fish"
    )]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Revoke a director's or realserver agent's certificates (by node id):
    /// its streams close at once and no certificate issued to it so far is
    /// accepted again, even after a restart. A token made for it alone
    /// (`lbctl token create --node NODE`) re-admits it with a new certificate.
    #[command(after_help = "Examples:\n  lbctl node revoke d3\n  lbctl node revoke web-7")]
    Revoke {
        /// The node id.
        node: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Issue an admin certificate for NAME (a new key made here, signed by
    /// the leader): admin.pem, admin.key and ca.pem in --out, for
    /// --credentials / LB_CREDENTIALS.
    #[command(
        after_help = "Examples:\n  lbctl admin create alice --out ~/.lbfabric-alice\n  lbctl admin create ci --out /etc/lbfabric/ci --days 30"
    )]
    Create {
        /// The admin's name (as the certificate and the controllers' logs show it).
        name: String,
        /// Where admin.pem, admin.key and ca.pem go.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Validity in days (at most 730).
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Admin names issued through `lbctl admin create`, and every revoked one.
    #[command(after_help = "Examples:\n  lbctl admin list\n  lbctl admin list -o json")]
    List,
    /// Revoke NAME: every admin certificate of that name issued so far is
    /// refused at once, also on open streams (`lbctl watch`), including
    /// ones made offline with `lbctl pki admin-cert --name`. Not your own.
    #[command(after_help = "Example:\n  lbctl admin revoke alice")]
    Revoke {
        /// The admin's name.
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AgentRole {
    Director,
    Realserver,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Mint a join token. It prints the token alone on stdout (for scripts)
    /// and what it allows on stderr. The agent presents it once with
    /// --join-token and keeps the certificate it gets in its --pki-dir.
    #[command(
        after_help = "Examples:\n  lbctl token create --role realserver\n  lbctl token create --role realserver --uses 20 --ttl 24h\n  lbctl token create --role director --node d2 --ttl 15m\n  lb-realserver --controller 10.0.0.1:7070 --node-id web-1 --address 192.168.10.11 --join-token \"$(lbctl token create --role realserver)\""
    )]
    Create {
        /// The agent it is for.
        #[arg(long, value_enum)]
        role: AgentRole,
        /// Only this node id may use it; also re-admits a revoked node.
        #[arg(long)]
        node: Option<String>,
        /// How long it can be used: 15m, 1h, 24h, 7d (at most 30d).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many agents may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// List join tokens (expired ones are kept a day).
    #[command(after_help = "Examples:\n  lbctl token list\n  lbctl token list -o json")]
    List,
    /// Delete a join token: nobody can join with it any more.
    #[command(after_help = "Example:\n  lbctl token delete 3f9a0c1b2d")]
    Delete {
        /// The token's id (the second part of lbj1.<id>.<secret>.<ca>).
        id: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum PkiCmd {
    /// Issue a certificate and key for an identity into a directory (with ca.pem).
    #[command(
        after_help = "Examples:\n  lbctl pki issue --ca-dir /var/lib/lbfabric/pki --role controller --name 2 --ip 10.0.0.2 --out /tmp/node2-pki\n  lbctl pki issue --ca-dir /var/lib/lbfabric/pki --role director --name d1 --out /etc/lbfabric\n  lbctl pki issue --ca-dir /var/lib/lbfabric/pki --role realserver --name web-1 --ip 192.168.10.11 --out /etc/lbfabric"
    )]
    Issue {
        /// Directory with ca.pem and ca.key.
        #[arg(long)]
        ca_dir: std::path::PathBuf,
        /// admin, controller, director or realserver.
        #[arg(long)]
        role: String,
        /// The node id (controllers: the Raft node id), or an admin's name.
        #[arg(long)]
        name: String,
        /// Addresses to name in the certificate (a realserver's RIP; a controller's listen address).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Where NAME.pem, NAME.key and ca.pem go.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Issue an admin certificate for lbctl (admin.pem, admin.key, ca.pem in --out).
    #[command(
        after_help = "Example:\n  lbctl pki admin-cert --ca-dir /var/lib/lbfabric/pki --name alice --out ~/.lbfabric && export LB_CREDENTIALS=~/.lbfabric"
    )]
    AdminCert {
        #[arg(long)]
        ca_dir: std::path::PathBuf,
        /// The admin's name, which `lbctl admin revoke` names.
        #[arg(long, default_value = "admin")]
        name: String,
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Keepalived,
    Ipvsadm,
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ServiceCmd {
    /// Create a virtual service.
    #[command(
        after_help = "Examples:\n  lbctl service create web --vip 10.10.1.30:80/tcp --scheduler wlc --mode nat --persistence 30\n  lbctl service create dns --vip 10.10.1.53:53/udp --scheduler rr --mode dr --realserver 10.0.0.11 --realserver 10.0.0.12\n  lbctl service create shop --fwmark 80 --scheduler sh --scheduler-flag sh-port --mode tun\n  lbctl service create api --vip [2001:db8::80]:443 --check https --check-path /healthz\n  lbctl service create proxy --vip 192.168.1.100:80/tcp --mode local --check http"
    )]
    Create {
        name: String,
        #[command(flatten)]
        spec: ServiceFlags,
    },
    /// List services.
    #[command(
        after_help = "Examples:\n  lbctl service list\n  lbctl service list -o json\n  lbctl service list --stale"
    )]
    List {
        /// Answer from the contacted node without asking the leader (may be behind).
        #[arg(long)]
        stale: bool,
    },
    /// Show one service with its realservers.
    #[command(after_help = "Examples:\n  lbctl service get web\n  lbctl service get web -o json")]
    Get {
        name: String,
        #[arg(long)]
        stale: bool,
    },
    /// Change a service; flags not given keep their value.
    #[command(
        after_help = "Examples:\n  lbctl service update web --scheduler rr\n  lbctl service update web --persistence 0"
    )]
    Update {
        name: String,
        #[command(flatten)]
        spec: ServiceFlags,
    },
    /// Delete a service.
    #[command(after_help = "Example:\n  lbctl service delete web")]
    Delete { name: String },
}

/// Service settings shared by `create` and `update`.
#[derive(Debug, Args)]
pub struct ServiceFlags {
    /// Virtual address: ADDRESS:PORT[/tcp|udp|sctp], IPv6 in brackets.
    #[arg(long, conflicts_with = "fwmark")]
    pub vip: Option<String>,
    /// Firewall-mark service instead of a VIP.
    #[arg(long)]
    pub fwmark: Option<u32>,
    /// Address family of a fwmark service: inet or inet6.
    #[arg(long, requires = "fwmark")]
    pub family: Option<String>,
    /// fwmark service: the VIP whose packets the director marks (an nftables
    /// rule) and whose address it owns. Without it you mark packets yourself.
    #[arg(long, requires = "fwmark")]
    pub mark_address: Option<String>,
    /// fwmark service: protocol of the marked packets: tcp, udp or sctp (default tcp).
    #[arg(long, requires = "mark_address")]
    pub mark_protocol: Option<String>,
    /// fwmark service: destination ports to mark, comma-separated (default every port).
    #[arg(long, requires = "mark_address", value_delimiter = ',')]
    pub mark_ports: Vec<u32>,
    /// rr wrr lc wlc lblc lblcr dh sh sed nq mh fo ovf twos (default wlc).
    #[arg(long)]
    pub scheduler: Option<String>,
    /// sh-fallback, sh-port, mh-fallback, mh-port (repeat for several).
    #[arg(long = "scheduler-flag")]
    pub scheduler_flags: Vec<String>,
    /// nat, dr, tun (default dr), or local: no IPVS, the VIP for a proxy on the director.
    #[arg(long)]
    pub mode: Option<String>,
    /// Tunnel encapsulation for mode tun (ipip).
    #[arg(long)]
    pub tunnel_type: Option<String>,
    /// Persistence timeout in seconds (0 = off).
    #[arg(long)]
    pub persistence: Option<u32>,
    /// Persistence netmask: 255.255.255.0 or a prefix length.
    #[arg(long)]
    pub netmask: Option<String>,
    /// One-packet scheduling (UDP).
    #[arg(long)]
    pub one_packet: Option<bool>,
    /// Weight for auto-registered realservers.
    #[arg(long)]
    pub default_weight: Option<u32>,
    /// Realserver agents whose labels match become backends (key=value, repeatable).
    #[arg(long = "selector")]
    pub selector: Vec<String>,
    /// Realserver ADDRESS[:PORT] with weight 1 (repeatable; replaces the list on update).
    #[arg(long = "realserver")]
    pub realservers: Vec<String>,
    /// Sorry server ADDRESS:PORT: below quorum (or with no realserver up)
    /// it replaces the realservers in the table.
    #[arg(long)]
    pub sorry_server: Option<String>,
    /// Minimum total weight of active realservers passing their check.
    #[arg(long)]
    pub quorum: Option<u32>,
    /// Quorum is lost under quorum - N and regained at quorum + N.
    #[arg(long)]
    pub hysteresis: Option<u32>,
    /// Directors allowed to own the VIP (key=value, repeatable).
    #[arg(long = "director-selector")]
    pub director_selector: Vec<String>,
    /// Preferred owner director, best first (repeatable).
    #[arg(long = "prefer-director")]
    pub prefer_director: Vec<String>,
    #[command(flatten)]
    pub check: CheckFlags,
}

/// Health check settings.
#[derive(Debug, Args)]
pub struct CheckFlags {
    /// Health check type: tcp, http, https, exec, udp, dns or ping ("none" removes it on update).
    #[arg(long = "check")]
    pub check: Option<String>,
    /// e.g. 2s, 500ms.
    #[arg(long = "check-interval")]
    pub check_interval: Option<String>,
    #[arg(long = "check-timeout")]
    pub check_timeout: Option<String>,
    #[arg(long = "check-rise")]
    pub check_rise: Option<u32>,
    #[arg(long = "check-fall")]
    pub check_fall: Option<u32>,
    #[arg(long = "check-port")]
    pub check_port: Option<u32>,
    #[arg(long = "check-path")]
    pub check_path: Option<String>,
    /// Accepted HTTP status or range, as keepalived's status_code (repeatable; 200-299; default 200).
    #[arg(long = "check-status")]
    pub check_status: Vec<crate::status::StatusCodes>,
    #[arg(long = "check-regex")]
    pub check_regex: Option<String>,
    /// MD5 of the expected body (keepalived digest).
    #[arg(long = "check-digest")]
    pub check_digest: Option<String>,
    #[arg(long = "check-host")]
    pub check_host: Option<String>,
    #[arg(long = "check-command")]
    pub check_command: Option<String>,
    /// An argument of the check command (repeatable; may start with -).
    #[arg(long = "check-arg", allow_hyphen_values = true)]
    pub check_args: Vec<String>,
    /// udp: the datagram to send, as hex (keepalived payload).
    #[arg(long = "check-udp-payload")]
    pub check_udp_payload: Option<String>,
    /// udp: the reply must start with these bytes, as hex (keepalived
    /// require_reply); without it only an ICMP error fails the check.
    #[arg(long = "check-udp-expect")]
    pub check_udp_expect: Option<String>,
    /// dns: record type asked (A, AAAA, CNAME, MX, NS, PTR, SOA, TXT; default SOA).
    #[arg(long = "check-dns-type")]
    pub check_dns_type: Option<String>,
    /// dns: name asked (default ".").
    #[arg(long = "check-dns-name")]
    pub check_dns_name: Option<String>,
    /// dns: an answer must hold this address, name or text.
    #[arg(long = "check-dns-expect")]
    pub check_dns_expect: Option<String>,
    /// Keep a failing realserver at weight 0 instead of removing it
    /// (keepalived inhibit_on_failure).
    #[arg(long = "check-inhibit")]
    pub check_inhibit: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum RealserverCmd {
    /// Add a realserver to a service.
    #[command(
        after_help = "Examples:\n  lbctl realserver add web 192.168.10.11:8080 --weight 2\n  lbctl realserver add dns 10.0.0.13"
    )]
    Add {
        service: String,
        /// ADDRESS[:PORT]; port 0 or omitted = the VIP's port.
        address: String,
        #[command(flatten)]
        fields: RealserverFields,
    },
    /// List realservers of one service or of all, with health and source (listed or agent).
    #[command(
        after_help = "Examples:\n  lbctl realserver list\n  lbctl realserver list web -o json"
    )]
    List {
        service: Option<String>,
        #[arg(long)]
        stale: bool,
    },
    /// Change a realserver; only given fields change.
    #[command(
        after_help = "Examples:\n  lbctl realserver update web 192.168.10.11:8080 --weight 0\n  lbctl realserver update web 192.168.10.11:8080 --state draining"
    )]
    Update {
        service: String,
        address: String,
        #[command(flatten)]
        fields: RealserverFields,
    },
    /// Remove a realserver from a service.
    #[command(after_help = "Example:\n  lbctl realserver remove web 192.168.10.11:8080")]
    Remove { service: String, address: String },
    /// Drain a realserver agent's host: weight 0 in every service it backs,
    /// so its connections finish and new ones go elsewhere (keepalived's
    /// weight-0 maintenance, for all services at once).
    #[command(
        after_help = "Example:\n  lbctl realserver drain web-1\n  lbctl realserver enable web-1"
    )]
    Drain {
        /// The realserver agent's node id.
        node: String,
    },
    /// Undo `drain`: the host's backends take new connections again.
    #[command(after_help = "Example:\n  lbctl realserver enable web-1")]
    Enable {
        /// The realserver agent's node id.
        node: String,
    },
}

#[derive(Debug, Args)]
pub struct RealserverFields {
    /// 0..65535 (default 1).
    #[arg(long)]
    pub weight: Option<u32>,
    /// Upper connection threshold (0 = none).
    #[arg(long)]
    pub upper_threshold: Option<u32>,
    /// Lower connection threshold.
    #[arg(long)]
    pub lower_threshold: Option<u32>,
    /// active, draining or disabled.
    #[arg(long)]
    pub state: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DirectorCmd {
    /// List directors: liveness, stream, last report, applied revision, VIPs owned (VIP@epoch),
    /// errors, foreign IPVS services.
    #[command(after_help = "Examples:\n  lbctl director list\n  lbctl director list -o json")]
    List,
    /// IPVS counters per service and realserver, as each director's kernel reports them
    /// (like `ipvsadm -Ln --stats`, or `--rate`); read every resync period (default 5 s).
    #[command(after_help = "Examples:\n  lbctl director stats\n  lbctl director stats d1 --rate")]
    Stats {
        /// Only this director.
        node: Option<String>,
        /// Rates over the kernel's 2 s estimator (conns, packets and bytes per second)
        /// instead of totals.
        #[arg(long)]
        rate: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Show the contacted controller's view of the cluster.
    #[command(
        after_help = "Examples:\n  lbctl cluster status\n  lbctl --controller 10.0.0.2:7070 cluster status -o json"
    )]
    Status,
    /// Add a controller as a non-voting learner; returns when it has caught up.
    #[command(after_help = "Example:\n  lbctl cluster add-learner 2 10.0.0.2:7070")]
    AddLearner { node_id: u64, address: String },
    /// Make a learner a voter.
    #[command(after_help = "Example:\n  lbctl cluster promote 2")]
    Promote { node_id: u64 },
    /// Remove a controller from the cluster.
    #[command(after_help = "Example:\n  lbctl cluster remove 3")]
    Remove { node_id: u64 },
    /// Save a consistent copy of the whole replicated state (from the
    /// leader, at one revision) to FILE, readable by you only: it holds
    /// the CA key. `lb-controller --restore FILE --data-dir NEW` seeds a new
    /// cluster from it when every controller is lost.
    #[command(
        after_help = "Examples:\n  lbctl cluster backup /var/backups/lbfabric-$(date +%F).backup\n  lb-controller --restore /var/backups/lbfabric-2026-12-03.backup --data-dir /var/lib/lbfabric --listen 10.0.0.1:7070"
    )]
    Backup { file: std::path::PathBuf },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command, leaf or group, shows examples in its --help.
    #[test]
    fn every_command_has_examples() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            let has_subcommands = cmd.get_subcommands().next().is_some();
            let examples = cmd
                .get_after_help()
                .is_some_and(|h| h.to_string().contains("Example"));
            if !has_subcommands && !examples && cmd.get_name() != "help" {
                missing.push(path.clone());
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no examples in --help of: {missing:?}");
        Cli::command().debug_assert();
    }
}
