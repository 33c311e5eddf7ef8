//! `drain` and `resume`, of one process (REST) or of the fleet (PostgreSQL).

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::Value;

use etlq::configuration::Settings;
use etlq::fleet::{Command, FleetStore};
use etlq::lifecycle::Mode;

use super::remote::Target;
use super::{exit, output};

/// What `drain --wait` does when SafeToStop is not reached in time.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnTimeout {
    /// Send resume, so the host goes back to work instead of idling (rolling deploys).
    Resume,
    /// Leave it draining (Kubernetes preStop: the pod is stopped next anyway).
    Stay,
}

#[derive(Args)]
pub struct DrainArgs {
    #[command(flatten)]
    target: Target,
    /// Wait until SafeToStop; exit 3 on timeout.
    #[arg(long)]
    wait: bool,
    /// Seconds to wait with --wait.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    timeout: u64,
    /// On timeout: resume the process(es) or leave them draining. Either way the message says
    /// what state they are in and how to change it.
    #[arg(long, value_enum, default_value_t = OnTimeout::Resume)]
    on_timeout: OnTimeout,
}

async fn status(
    settings: &Settings,
    target: &Target,
    fleet: Option<&FleetStore>,
) -> anyhow::Result<Value> {
    match fleet {
        Some(f) => Ok(serde_json::to_value(
            f.status(settings.worker.worker_ttl()).await?,
        )?),
        None => {
            target
                .server
                .call(settings, reqwest::Method::GET, "/v1/lifecycle")
                .await
        }
    }
}

fn describe(status: &Value) -> String {
    if let Some(workers) = status["workers"].as_array() {
        let busy: Vec<String> = workers
            .iter()
            .filter(|w| w["mode"] != "SafeToStop")
            .map(|w| {
                format!(
                    "{} ({}, {} in flight)",
                    w["id"].as_str().unwrap_or("?"),
                    w["mode"].as_str().unwrap_or("?"),
                    w["in_flight"]
                )
            })
            .collect();
        format!(
            "fleet is {}; not yet safe: {}",
            status["mode"].as_str().unwrap_or("?"),
            busy.join(", ")
        )
    } else {
        // An older release's response has no `writing`.
        let writing = status["writing"].as_u64().unwrap_or(0);
        format!(
            "process {} is {} with {} job(s) in flight{}",
            status["worker_id"].as_str().unwrap_or("?"),
            status["mode"].as_str().unwrap_or("?"),
            status["in_flight"],
            if writing > 0 {
                format!(" and {writing} outcome(s) being written")
            } else {
                String::new()
            }
        )
    }
}

pub async fn drain(settings: &Settings, a: DrainArgs, json: bool) -> anyhow::Result<u8> {
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let fleet = if a.target.fleet {
        let f = FleetStore::new(&super::pools(settings).await?);
        let n = f
            .command(Command::Drain, settings.worker.worker_ttl())
            .await?;
        eprintln!("drain sent to {n} workers");
        Some(f)
    } else {
        a.target
            .server
            .call(settings, reqwest::Method::POST, "/v1/lifecycle/drain")
            .await?;
        None
    };
    loop {
        let st = status(settings, &a.target, fleet.as_ref()).await?;
        let mode = st["mode"].as_str().and_then(Mode::parse);
        if !a.wait || mode == Some(Mode::SafeToStop) {
            print_status(&st, json);
            return Ok(exit::OK);
        }
        if Instant::now() >= deadline {
            let now = describe(&st);
            let scope = if a.target.fleet { " --fleet" } else { "" };
            match a.on_timeout {
                OnTimeout::Resume => {
                    resume_target(settings, &a.target, fleet.as_ref()).await?;
                    eprintln!(
                        "etlq: timed out after {}s waiting for SafeToStop: {now}; sent resume (--on-timeout resume), so it is claiming jobs again. Its running jobs were never interrupted.",
                        a.timeout
                    );
                }
                OnTimeout::Stay => eprintln!(
                    "etlq: timed out after {}s waiting for SafeToStop: {now}. It stays draining (--on-timeout stay): it claims no new jobs, and releases its running ones at their checkpoints after worker.drain_timeout_ms. To put it back to work: etlq resume{scope}",
                    a.timeout
                ),
            }
            return Ok(exit::TIMEOUT);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn resume_target(
    settings: &Settings,
    target: &Target,
    fleet: Option<&FleetStore>,
) -> anyhow::Result<()> {
    match fleet {
        Some(f) => {
            f.command(Command::Resume, settings.worker.worker_ttl())
                .await?;
        }
        None => {
            target
                .server
                .call(settings, reqwest::Method::POST, "/v1/lifecycle/resume")
                .await?;
        }
    }
    Ok(())
}

fn print_status(st: &Value, json: bool) {
    if json {
        output::json(st);
    } else {
        println!("{}", describe(st));
    }
}

pub async fn resume(settings: &Settings, target: Target, json: bool) -> anyhow::Result<u8> {
    if target.fleet {
        let f = FleetStore::new(&super::pools(settings).await?);
        let n = f
            .command(Command::Resume, settings.worker.worker_ttl())
            .await?;
        println!("resume sent to {n} workers");
    } else {
        let body = target
            .server
            .call(settings, reqwest::Method::POST, "/v1/lifecycle/resume")
            .await?;
        print_status(&body, json);
    }
    Ok(exit::OK)
}
