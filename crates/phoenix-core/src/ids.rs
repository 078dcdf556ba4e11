//! One id type per entity. Experiments and tasks use UUIDv7 (time-ordered, so indexes stay
//! append-mostly); hosts are named by the operator and validated here.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("`{value}` is not a valid {kind} id: {reason}")]
    Invalid {
        kind: &'static str,
        value: String,
        reason: String,
    },
}

macro_rules! uuid_id {
    ($name:ident, $kind:literal) => {
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            Serialize,
            Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|e| IdError::Invalid {
                    kind: $kind,
                    value: s.chars().take(64).collect(),
                    reason: e.to_string(),
                })
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(ExperimentId, "experiment");
uuid_id!(TaskId, "task");
uuid_id!(DeploymentId, "pipeline deployment");

/// The identity an agent runs under (`X-Agent-Host-ID`). 1–253 characters of
/// `[A-Za-z0-9._-]`, the character set of a DNS name, so it is safe in labels, paths and logs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "node-a-1")]
pub struct HostId(String);

impl HostId {
    pub const MAX_LEN: usize = 253;

    pub fn parse(s: &str) -> Result<Self, IdError> {
        let invalid = |reason: &str| IdError::Invalid {
            kind: "host",
            value: s.chars().take(64).collect(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(invalid("must be at most 253 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid(
                "may only contain letters, digits, '.', '_' and '-'",
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for HostId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for HostId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostId::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_id_accepts_dns_like_names() {
        assert!(HostId::parse("node-a.example_1").is_ok());
    }

    #[test]
    fn host_id_rejects_empty_long_and_odd_characters() {
        assert!(HostId::parse("").is_err());
        assert!(HostId::parse(&"a".repeat(254)).is_err());
        assert!(HostId::parse("a b").is_err());
        assert!(HostId::parse("a/b").is_err());
    }

    #[test]
    fn experiment_id_round_trips_through_text() {
        let id = ExperimentId::new();
        assert_eq!(id.to_string().parse::<ExperimentId>(), Ok(id));
        assert!("nope".parse::<ExperimentId>().is_err());
    }
}
