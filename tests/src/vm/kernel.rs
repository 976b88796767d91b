//! Which kernel the VM boots, and its files made bootable: the ELF
//! `vmlinux` out of the compressed `/boot/vmlinuz-*`, and modules unpacked
//! for the initramfs.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// The kernel the VM boots: `LB_VM_KERNEL` (a version under /boot) when
/// set, else the newest `/boot/vmlinuz-*` whose modules include IPVS.
pub fn find_kernel() -> anyhow::Result<String> {
    let has_ipvs = |v: &str| {
        let dir = format!("/lib/modules/{v}/kernel/net/netfilter/ipvs");
        MODULE_SUFFIXES
            .iter()
            .any(|(suffix, _)| Path::new(&format!("{dir}/ip_vs{suffix}")).exists())
    };
    if let Some(v) = std::env::var("LB_VM_KERNEL").ok().filter(|v| !v.is_empty()) {
        if !Path::new(&format!("/boot/vmlinuz-{v}")).exists() || !has_ipvs(&v) {
            bail!("LB_VM_KERNEL={v}: no /boot/vmlinuz-{v} with IPVS modules");
        }
        return Ok(v);
    }
    let mut versions: Vec<String> = std::fs::read_dir("/boot")
        .context("reading /boot")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(String::from)
        })
        .filter(|v| has_ipvs(v))
        .collect();
    // By their numbers, not as text: "6.9" comes before "6.12".
    versions.sort_by_key(|v| version_numbers(v));
    versions.pop().context(
        "no /boot/vmlinuz-* with IPVS modules; install linux-image-amd64 (scripts/setup.sh)",
    )
}

/// A kernel version's numbers in order (`6.12.95+deb12-amd64` → 6, 12,
/// 95, 12, 64), to compare versions by.
fn version_numbers(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// How a kernel's modules may be stored (Debian's 6.1 leaves them plain,
/// its later kernels compress them with xz), and the tool that unpacks
/// each for the initramfs (busybox's insmod takes plain modules only).
pub(super) const MODULE_SUFFIXES: [(&str, Option<&str>); 3] = [
    (".ko", None),
    (".ko.xz", Some("xz")),
    (".ko.zst", Some("zstd")),
];

/// A module file's contents, unpacked, and its plain name (`9p.ko`).
pub(super) fn module_file(path: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .context("module file name")?;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    for (suffix, tool) in MODULE_SUFFIXES.iter().rev() {
        let (Some(stem), Some(tool)) = (name.strip_suffix(suffix), tool) else {
            continue;
        };
        let out = Command::new(tool)
            .args(["-dc", &path.display().to_string()])
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {tool} to unpack {}", path.display()))?;
        if !out.status.success() {
            bail!("{tool} -dc {}: {}", path.display(), out.status);
        }
        return Ok((format!("{stem}.ko"), out.stdout));
    }
    Ok((name.to_string(), bytes))
}

/// Finds the compressed payload in a bzImage and decompresses it to an ELF.
pub(super) fn extract_vmlinux(vmlinuz: &Path, out: &Path) -> anyhow::Result<()> {
    let image = std::fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let formats: [(&[u8], &[&str]); 3] = [
        (b"\xfd7zXZ\x00", &["xz", "-dc"]),
        (b"\x28\xb5\x2f\xfd", &["zstd", "-dc"]),
        (b"\x1f\x8b\x08\x00", &["gzip", "-dc"]),
    ];
    for (magic, tool) in formats {
        let mut from = 0;
        while let Some(pos) = find(&image[from..], magic).map(|p| p + from) {
            from = pos + 1;
            let mut child = Command::new(tool[0])
                .args(&tool[1..])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("running {}", tool[0]))?;
            let mut stdin = child.stdin.take().context("decompressor stdin")?;
            let payload = image[pos..].to_vec();
            let writer = std::thread::spawn(move || {
                // Trailing bytes after the stream make the tool complain; the output is still whole.
                let _ = stdin.write_all(&payload);
            });
            let mut elf = Vec::new();
            child
                .stdout
                .take()
                .context("decompressor stdout")?
                .read_to_end(&mut elf)?;
            let _ = child.wait();
            let _ = writer.join();
            if elf.starts_with(b"\x7fELF") {
                let tmp = out.with_extension("tmp");
                std::fs::write(&tmp, elf)?;
                std::fs::rename(&tmp, out)?;
                return Ok(());
            }
        }
    }
    bail!("no compressed ELF kernel found in {}", vmlinuz.display())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_compare_by_their_numbers() {
        let mut v = ["6.12.95+deb12-amd64", "6.1.0-57-amd64", "6.9.7+bpo-amd64"];
        v.sort_by_key(|v| version_numbers(v));
        assert_eq!(
            v,
            ["6.1.0-57-amd64", "6.9.7+bpo-amd64", "6.12.95+deb12-amd64"]
        );
    }
}
