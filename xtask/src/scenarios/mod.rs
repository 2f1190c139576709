//! The scenarios, by id. Each one sets up its rig (which services, which processes), drives its
//! workload, injects its faults, and records its pass criteria in the rig's report.

mod s1_duplicates;
mod s2_worker_crashes;
pub(crate) mod s3_scheduler_crashes;
mod s4_paused_holder;
mod s5_dependency_restarts;
mod s6_partitions;
mod s7_clock_skew;
mod s8_poison;

use crate::private::{Private, PrivatePg, PrivateRabbit, PrivateRedis};
use crate::rig::{Opts, Rig, Services};

/// (id, title) of every scenario, in run order.
pub const ALL: &[(&str, &str)] = &[
    ("S1", "duplicates"),
    ("S2", "worker crashes"),
    ("S3", "scheduler crashes"),
    ("S4", "paused lease holder"),
    ("S5", "dependency restarts"),
    ("S6", "partitions"),
    ("S7", "clock skew"),
    ("S8", "poison and long tasks"),
];

pub fn title(id: &str) -> Option<&'static str> {
    ALL.iter()
        .find(|(i, _)| i.eq_ignore_ascii_case(id))
        .map(|(_, t)| *t)
}

/// The services a scenario runs on: the machine's, except where a scenario restarts or kills a
/// dependency (S5: private PostgreSQL, Redis and RabbitMQ) or needs a broker setting the shared node
/// must not get (S8: a private RabbitMQ node with a 5 s consumer timeout).
pub async fn services(id: &str, _opts: &Opts, name: &str) -> anyhow::Result<Services> {
    let mut s = Services::machine();
    let (pg, redis, rabbit) = match id {
        "S5" => (true, true, true),
        "S8" => (false, false, true),
        _ => return Ok(s),
    };
    let mut p = Private::new(name)?;
    if pg {
        let i = PrivatePg::start(&p.root).await?;
        s.pg = i.service();
        p.pg = Some(i);
    }
    if redis {
        let i = PrivateRedis::start(&p.root).await?;
        s.redis = i.service();
        p.redis = Some(i);
    }
    if rabbit {
        let i = PrivateRabbit::start(&p.root, name).await?;
        s.rabbit = i.service();
        p.rabbit = Some(i);
    }
    s.private = Some(p);
    Ok(s)
}

/// Runs one scenario's body on a rig.
pub async fn run(id: &str, rig: &mut Rig) -> anyhow::Result<()> {
    match id {
        "S1" => s1_duplicates::run(rig).await,
        "S2" => s2_worker_crashes::run(rig).await,
        "S3" => s3_scheduler_crashes::run(rig).await,
        "S4" => s4_paused_holder::run(rig).await,
        "S5" => s5_dependency_restarts::run(rig).await,
        "S6" => s6_partitions::run(rig).await,
        "S7" => s7_clock_skew::run(rig).await,
        "S8" => s8_poison::run(rig).await,
        other => anyhow::bail!("no scenario {other}"),
    }
}
