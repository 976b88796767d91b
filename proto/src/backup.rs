//! The backup file: what `lbctl cluster backup` writes and `lb-controller
//! --restore` reads. One header line, `lbfabric-backup-1 revision=N
//! bytes=M sha256=HEX`, then the leader's applied state in the
//! controller's snapshot format (versioned by its own magic). The header
//! says what the file holds without the controller's code, and the
//! checksum catches a copy cut short.

use crate::pki::sha256_hex;

const MAGIC: &str = "lbfabric-backup-1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("not an lbfabric backup (it does not start with {MAGIC:?})")]
    NotABackup,
    #[error("backup header: {0}")]
    Header(String),
    #[error("the backup holds {got} bytes of state, its header says {want}: the copy is cut short or grew")]
    Length { got: usize, want: usize },
    #[error("the backup's state does not match its sha256 (header {want}, content {got})")]
    Checksum { got: String, want: String },
}

/// A backup, read back and checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Backup {
    /// The configuration revision the state was taken at.
    pub revision: u64,
    /// The state (the controller's snapshot format).
    pub state: Vec<u8>,
}

impl Backup {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{MAGIC} revision={} bytes={} sha256={}\n",
            self.revision,
            self.state.len(),
            sha256_hex(&self.state)
        )
        .into_bytes();
        out.extend_from_slice(&self.state);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Backup, BackupError> {
        let end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(BackupError::NotABackup)?;
        let header = std::str::from_utf8(&bytes[..end]).map_err(|_| BackupError::NotABackup)?;
        let mut words = header.split(' ');
        if words.next() != Some(MAGIC) {
            return Err(BackupError::NotABackup);
        }
        let mut field = |name: &str| {
            words
                .next()
                .and_then(|w| w.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| BackupError::Header(format!("{name}= missing in {header:?}")))
        };
        let number = |name: &str, text: String| {
            text.parse::<u64>()
                .map_err(|_| BackupError::Header(format!("{name}={text} is not a number")))
        };
        let revision = number("revision", field("revision")?)?;
        let want = number("bytes", field("bytes")?)?;
        let sha256 = field("sha256")?;
        let state = bytes[end + 1..].to_vec();
        let want = usize::try_from(want).unwrap_or(usize::MAX);
        if state.len() != want {
            return Err(BackupError::Length {
                got: state.len(),
                want,
            });
        }
        let got = sha256_hex(&state);
        if got != sha256 {
            return Err(BackupError::Checksum { got, want: sha256 });
        }
        Ok(Backup { revision, state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_reads_back_and_a_damaged_one_says_how() {
        let b = Backup {
            revision: 42,
            state: b"lbfabric-snapshot-2\n\x01\x02\n\x03".to_vec(),
        };
        let bytes = b.to_bytes();
        assert!(bytes.starts_with(b"lbfabric-backup-1 revision=42 bytes=24 sha256="));
        assert_eq!(Backup::from_bytes(&bytes), Ok(b));
        let cut = &bytes[..bytes.len() - 1];
        assert_eq!(
            Backup::from_bytes(cut),
            Err(BackupError::Length { got: 23, want: 24 })
        );
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            Backup::from_bytes(&flipped),
            Err(BackupError::Checksum { .. })
        ));
        assert_eq!(
            Backup::from_bytes(b"services:\n  - web\n"),
            Err(BackupError::NotABackup)
        );
        assert!(Backup::from_bytes(b"lbfabric-backup-1 revision=x\n")
            .unwrap_err()
            .to_string()
            .contains("revision=x is not a number"));
    }
}
