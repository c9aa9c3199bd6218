//! Where this process sits in a data-parallel job: its rank, the world's size and the
//! master's address, from the launcher's environment (torchrun, Slurm) or from flags.
//!
//! torchrun sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`; Slurm's
//! `srun` sets `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID` and `SLURM_JOB_NODELIST`
//! (the master is the list's first host; the port is `MASTER_PORT` or [`DEFAULT_PORT`]).
//! torchrun's variables win when both are present (torchrun inside an `srun` allocation).

use std::collections::HashMap;

/// The master port when the environment names none (torchrun's default too).
pub const DEFAULT_PORT: u16 = 29500;

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// This process's rank, `0..world_size`; rank 0 writes checkpoints and logs.
    pub rank: u32,
    /// Number of processes (one per device).
    pub world_size: u32,
    /// Rank among the processes of this machine (picks the device: `cuda:LOCAL_RANK`).
    pub local_rank: u32,
    /// `host:port` of rank 0, where the collective's orchestrator listens. `None` alone.
    pub master: Option<Master>,
}

/// Rank 0's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Master {
    /// Host name or address.
    pub host: String,
    /// Port of the orchestrator; the ranks' tensor services use the ports after it.
    pub port: u16,
}

/// A launch environment or flags that do not describe a world.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WorldError {
    /// A variable or flag is not a number or is out of range.
    #[error("{name} = `{value}`: {why}")]
    Invalid {
        /// The variable or flag.
        name: String,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A world of several processes without a master address.
    #[error(
        "{world_size} processes but no master address: set MASTER_ADDR and MASTER_PORT \
         (torchrun does), run under srun, or pass --master HOST:PORT"
    )]
    NoMaster {
        /// The world's size.
        world_size: u32,
    },
}

impl World {
    /// One process alone.
    pub fn single() -> Self {
        World {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master: None,
        }
    }

    /// Whether this process is rank 0 (writes the run directory).
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Whether more than one process shares the work.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }

    /// The world the process environment describes (torchrun's, else Slurm's), or one
    /// process alone when it describes none.
    pub fn from_env() -> Result<Self, WorldError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&|name| vars.get(name).cloned())
    }

    /// [`World::from_env`] over any variable lookup (tests).
    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<Self, WorldError> {
        let port = match var("MASTER_PORT") {
            Some(p) => parse::<u16>("MASTER_PORT", &p)?,
            None => DEFAULT_PORT,
        };
        let (rank, world_size, local_rank, host) = if let (Some(rank), Some(world)) =
            (var("RANK"), var("WORLD_SIZE"))
        {
            let local = var("LOCAL_RANK").unwrap_or_else(|| rank.clone());
            (
                parse::<u32>("RANK", &rank)?,
                parse::<u32>("WORLD_SIZE", &world)?,
                parse::<u32>("LOCAL_RANK", &local)?,
                var("MASTER_ADDR"),
            )
        } else if let (Some(rank), Some(world)) = (var("SLURM_PROCID"), var("SLURM_NTASKS")) {
            let local = var("SLURM_LOCALID").unwrap_or_else(|| "0".into());
            let host = match var("MASTER_ADDR") {
                Some(h) => Some(h),
                None => match var("SLURM_JOB_NODELIST").or_else(|| var("SLURM_NODELIST")) {
                    Some(list) => Some(first_host(&list).ok_or_else(|| WorldError::Invalid {
                        name: "SLURM_JOB_NODELIST".into(),
                        value: list.clone(),
                        why: "names no host".into(),
                    })?),
                    None => None,
                },
            };
            (
                parse::<u32>("SLURM_PROCID", &rank)?,
                parse::<u32>("SLURM_NTASKS", &world)?,
                parse::<u32>("SLURM_LOCALID", &local)?,
                host,
            )
        } else {
            return Ok(World::single());
        };
        Self::new(
            rank,
            world_size,
            local_rank,
            host.map(|host| Master { host, port }),
        )
    }

    /// A checked world: `rank < world_size`, a master when there is more than one process.
    pub fn new(
        rank: u32,
        world_size: u32,
        local_rank: u32,
        master: Option<Master>,
    ) -> Result<Self, WorldError> {
        if world_size == 0 {
            return Err(WorldError::Invalid {
                name: "world size".into(),
                value: "0".into(),
                why: "must be at least 1".into(),
            });
        }
        if rank >= world_size {
            return Err(WorldError::Invalid {
                name: "rank".into(),
                value: rank.to_string(),
                why: format!("must be below the world size {world_size}"),
            });
        }
        if world_size > 1 && master.is_none() {
            return Err(WorldError::NoMaster { world_size });
        }
        Ok(World {
            rank,
            world_size,
            local_rank,
            master,
        })
    }
}

impl std::str::FromStr for Master {
    type Err = WorldError;

    /// `HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| WorldError::Invalid {
            name: "--master".into(),
            value: s.into(),
            why: why.into(),
        };
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| invalid("expected HOST:PORT"))?;
        if host.is_empty() {
            return Err(invalid("the host is empty"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| invalid("the port is not a number below 65536"))?;
        Ok(Master {
            host: host.into(),
            port,
        })
    }
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, WorldError> {
    value.trim().parse().map_err(|_| WorldError::Invalid {
        name: name.into(),
        value: value.into(),
        why: "not a number".into(),
    })
}

/// The first host of a Slurm node list: `gpu[03-05,07],cpu1` ─► `gpu03`.
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    let end = list.find([',', '[']).unwrap_or(list.len());
    let prefix = &list[..end];
    if list[end..].starts_with('[') {
        let inner = &list[end + 1..list[end..].find(']').map(|i| end + i)?];
        let first = inner.split(',').next()?;
        let first = first.split('-').next()?;
        Some(format!("{prefix}{first}"))
    } else if prefix.is_empty() {
        None
    } else {
        Some(prefix.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(vars: &[(&str, &str)]) -> Result<World, WorldError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        World::from_vars(&|name| map.get(name).cloned())
    }

    #[test]
    fn slurm_node_lists() {
        assert_eq!(first_host("gpu[03-05,07],cpu1").as_deref(), Some("gpu03"));
        assert_eq!(first_host("node7").as_deref(), Some("node7"));
        assert_eq!(first_host("a1,b2").as_deref(), Some("a1"));
        assert_eq!(first_host("n[1,4]").as_deref(), Some("n1"));
        assert_eq!(first_host(""), None);
    }

    #[test]
    fn torchrun_then_slurm_then_alone() {
        let w = world(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "1234"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
        ])
        .unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank), (3, 8, 1));
        assert_eq!(
            w.master,
            Some(Master {
                host: "10.0.0.1".into(),
                port: 1234
            })
        );
        let w = world(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[12-19]"),
        ])
        .unwrap();
        assert_eq!((w.rank, w.world_size, w.local_rank), (5, 16, 1));
        assert_eq!(w.master.unwrap().host, "gpu12");
        assert_eq!(world(&[]).unwrap(), World::single());
    }

    #[test]
    fn bad_worlds_name_what_is_wrong() {
        let e = world(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")]).unwrap_err();
        assert!(e.to_string().contains("below the world size 2"), "{e}");
        let e = world(&[("RANK", "0"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(matches!(e, WorldError::NoMaster { world_size: 2 }), "{e}");
        let e = world(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().starts_with("RANK = `x`"), "{e}");
        assert!("host".parse::<Master>().is_err());
        assert_eq!("h:7".parse::<Master>().unwrap().port, 7);
    }
}
