//! Postgres snapshots as stream positions, and WatchJobs resume tokens.
//!
//! A [`Snapshot`] (`pg_current_snapshot()`, text `xmin:xmax:xip,...`) says which
//! transactions had committed when it was taken. Every job row records the
//! transaction that last changed it (`changed_xid`), so "every change after
//! position S" is exactly the rows whose `changed_xid` is not visible in S, in
//! whatever order versions were drawn and however many notifications were lost.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Which transactions had committed when a snapshot was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every transaction below it had finished.
    pub xmin: u64,
    /// Every transaction from it on had not started.
    pub xmax: u64,
    /// Transactions in `xmin..xmax` still in progress.
    pub xip: Vec<u64>,
}

impl Snapshot {
    /// Parses Postgres's text form `xmin:xmax:xip1,xip2`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let list = parts.next()?;
        if parts.next().is_some() || xmin > xmax {
            return None;
        }
        let xip = if list.is_empty() {
            Vec::new()
        } else {
            list.split(',')
                .map(str::parse)
                .collect::<Result<Vec<u64>, _>>()
                .ok()?
        };
        if xip.iter().any(|x| *x < xmin || *x >= xmax) {
            return None;
        }
        Some(Self { xmin, xmax, xip })
    }

    /// Whether the changes of transaction `xid` are visible in this snapshot.
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.xip.contains(&xid))
    }

    /// Whether everything this snapshot sees, `later` sees too.
    pub fn is_within(&self, later: &Snapshot) -> bool {
        self.xmax <= later.xmax && later.xip.iter().all(|x| !self.sees(*x))
    }
}

impl std::fmt::Display for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, xid) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{xid}")?;
        }
        Ok(())
    }
}

/// Where a WatchJobs stream stands: every change visible in `base` was delivered;
/// with `within`, so were the changes of the batch up to `base..to` whose version
/// is at most `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Everything visible here was delivered.
    pub base: Snapshot,
    /// A batch delivered in part: its end, and the last version delivered from it.
    pub within: Option<(u64, Snapshot)>,
}

impl Position {
    /// The position after everything visible in `snapshot`.
    pub fn at(snapshot: Snapshot) -> Self {
        Self {
            base: snapshot,
            within: None,
        }
    }

    /// Whether a job changed by `xid` to `version` comes after this position.
    pub fn is_before(&self, xid: u64, version: u64) -> bool {
        if self.base.sees(xid) {
            return false;
        }
        match &self.within {
            Some((delivered, to)) => !to.sees(xid) || version > *delivered,
            None => true,
        }
    }
}

const FORMAT: u8 = 1;
const DOMAIN: &[u8] = b"jobq.v1.WatchJobs.resume_token";

/// Encodes a position as an opaque resume token.
pub fn encode(position: &Position) -> String {
    let text = match &position.within {
        None => position.base.to_string(),
        Some((version, to)) => format!("{}/{version}/{to}", position.base),
    };
    let mut bytes = vec![FORMAT];
    bytes.extend_from_slice(text.as_bytes());
    let digest = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(&bytes)
        .finalize();
    bytes.extend_from_slice(&digest[..8]);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a resume token this server (or another jobq server) issued.
pub fn decode(token: &str) -> Result<Position, String> {
    const NOT_OURS: &str = "is not a resume token jobq issued (altered or truncated)";
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| NOT_OURS.to_owned())?;
    if bytes.len() < 9 || bytes[0] != FORMAT {
        return Err(NOT_OURS.to_owned());
    }
    let (body, check) = bytes.split_at(bytes.len() - 8);
    let digest = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(body)
        .finalize();
    if &digest[..8] != check {
        return Err(NOT_OURS.to_owned());
    }
    let text = std::str::from_utf8(&body[1..]).map_err(|_| NOT_OURS.to_owned())?;
    let mut parts = text.split('/');
    let base = parts
        .next()
        .and_then(Snapshot::parse)
        .ok_or_else(|| NOT_OURS.to_owned())?;
    let within = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => None,
        (Some(version), Some(to), None) => Some((
            version.parse().map_err(|_| NOT_OURS.to_owned())?,
            Snapshot::parse(to).ok_or_else(|| NOT_OURS.to_owned())?,
        )),
        _ => return Err(NOT_OURS.to_owned()),
    };
    Ok(Position { base, within })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(text: &str) -> Snapshot {
        Snapshot::parse(text).unwrap()
    }

    #[test]
    fn snapshots_parse_and_see_what_postgres_does() {
        let s = snap("100:105:101,103");
        assert_eq!(s.to_string(), "100:105:101,103");
        assert!(s.sees(99) && s.sees(100) && s.sees(102) && s.sees(104));
        assert!(!s.sees(101) && !s.sees(103) && !s.sees(105));
        assert_eq!(snap("7:7:").xip, Vec::<u64>::new());
        for bad in ["", "1:2", "3:2:", "1:5:9", "a:b:", "1:2:3:4"] {
            assert!(Snapshot::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn later_snapshots_contain_earlier_ones() {
        let early = snap("100:105:101,103");
        let later = snap("103:110:103,107");
        assert!(early.is_within(&later));
        assert!(!later.is_within(&early));
        // 103 committed in `early`'s view? No: it was in progress in both.
        assert!(
            !snap("100:105:101").is_within(&later),
            "104 and 103: 103 is seen by the first but not the second"
        );
    }

    #[test]
    fn positions_within_a_batch() {
        let position = Position {
            base: snap("100:105:"),
            within: Some((50, snap("100:110:"))),
        };
        assert!(!position.is_before(104, 99), "seen in base");
        assert!(!position.is_before(106, 40), "in the batch, delivered");
        assert!(
            position.is_before(106, 51),
            "in the batch, not yet delivered"
        );
        assert!(
            position.is_before(111, 1),
            "after the batch, whatever its version"
        );
    }

    #[test]
    fn tokens_round_trip_and_refuse_tampering() {
        for position in [
            Position::at(snap("100:105:101,103")),
            Position {
                base: snap("1:2:"),
                within: Some((9, snap("1:3:2"))),
            },
        ] {
            let token = encode(&position);
            assert_eq!(decode(&token), Ok(position));
            let mut bytes = token.into_bytes();
            bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
            assert!(decode(&String::from_utf8(bytes).unwrap()).is_err());
        }
        assert!(decode("").is_err());
        assert!(decode("abc").is_err());
    }
}
