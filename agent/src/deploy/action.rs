//! The rollback action on a fail verdict: a command (argv, no shell, with PATROL_PROBES,
//! PATROL_VERSION and PATROL_REASON in its environment) or a webhook (JSON POST). Dry-run by
//! default, at most once per deploy, its outcome logged, returned and counted in
//! `patrol_rollback_actions_total{result}`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::verdict::Verdict;

/// What the action did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActionOutcome {
    /// `executed`, `failed`, `dry_run`, `skipped_duplicate` or `not_configured`.
    pub result: &'static str,
    /// What happened, for logs and the API.
    pub detail: String,
}

/// The configured action (from `verify.action`).
#[derive(Debug, Clone, Default)]
pub struct RollbackAction {
    /// argv of the command.
    pub command: Vec<String>,
    /// Webhook URL.
    pub webhook: Option<String>,
    /// Only log what would be done.
    pub dry_run: bool,
}

/// The deploys an action already ran for; lives as long as the agent, across reloads.
#[derive(Debug, Default)]
pub struct ActedDeploys {
    done: Mutex<HashSet<String>>,
}

impl ActedDeploys {
    /// True the first time `deploy` is seen.
    pub fn first_time(&self, deploy: &str) -> bool {
        self.done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(deploy.to_string())
    }
}

impl RollbackAction {
    /// The action of a config.
    pub fn from_config(config: &crate::config::Config) -> RollbackAction {
        RollbackAction {
            command: config.verify.action_command.clone(),
            webhook: config.verify.action_webhook.clone(),
            dry_run: config.verify.action_dry_run,
        }
    }

    /// Acts on a fail verdict for `deploy` (a version or checksum), at most once per deploy.
    pub async fn run(
        &self,
        acted: &ActedDeploys,
        deploy: &str,
        probes: &[String],
        verdict: &Verdict,
    ) -> ActionOutcome {
        if self.command.is_empty() && self.webhook.is_none() {
            return ActionOutcome {
                result: "not_configured",
                detail: "no verify.action is configured".into(),
            };
        }
        if !acted.first_time(deploy) {
            return ActionOutcome {
                result: "skipped_duplicate",
                detail: format!("the rollback action already ran for deploy `{deploy}`"),
            };
        }
        let reason = verdict.summary().replace('\n', "; ");
        if self.dry_run {
            let what = if self.command.is_empty() {
                format!("POST {}", self.webhook.as_deref().unwrap_or(""))
            } else {
                self.command.join(" ")
            };
            tracing::warn!(deploy, action = %what, reason = %reason, "Rollback action not run: dry_run is on.");
            return ActionOutcome {
                result: "dry_run",
                detail: format!("would run: {what}"),
            };
        }
        let outcome = if !self.command.is_empty() {
            self.run_command(deploy, probes, &reason).await
        } else {
            self.post_webhook(deploy, probes, verdict).await
        };
        match outcome.result {
            "executed" => {
                tracing::warn!(deploy, detail = %outcome.detail, "Rollback action executed.")
            }
            _ => tracing::error!(deploy, detail = %outcome.detail, "Rollback action failed."),
        }
        outcome
    }

    async fn run_command(&self, deploy: &str, probes: &[String], reason: &str) -> ActionOutcome {
        let mut cmd = tokio::process::Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .env("PATROL_PROBES", probes.join(","))
            .env("PATROL_VERSION", deploy)
            .env("PATROL_REASON", reason)
            .kill_on_drop(true);
        match tokio::time::timeout(Duration::from_secs(300), cmd.output()).await {
            Err(_) => ActionOutcome {
                result: "failed",
                detail: format!("`{}` did not finish within 5m", self.command.join(" ")),
            },
            Ok(Err(e)) => ActionOutcome {
                result: "failed",
                detail: format!("cannot run `{}`: {e}", self.command[0]),
            },
            Ok(Ok(out)) if out.status.success() => ActionOutcome {
                result: "executed",
                detail: format!("`{}` exited 0", self.command.join(" ")),
            },
            Ok(Ok(out)) => ActionOutcome {
                result: "failed",
                detail: format!(
                    "`{}` exited with {}: {}",
                    self.command.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                        .trim()
                        .chars()
                        .take(500)
                        .collect::<String>()
                ),
            },
        }
    }

    async fn post_webhook(
        &self,
        deploy: &str,
        probes: &[String],
        verdict: &Verdict,
    ) -> ActionOutcome {
        let url = self.webhook.as_deref().unwrap_or_default();
        let body = serde_json::json!({ "deploy": deploy, "probes": probes, "verdict": verdict });
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                return ActionOutcome {
                    result: "failed",
                    detail: format!("cannot build an HTTP client: {e}"),
                };
            }
        };
        match client.post(url).json(&body).send().await {
            Ok(r) if r.status().is_success() => ActionOutcome {
                result: "executed",
                detail: format!("POST {url} answered {}", r.status()),
            },
            Ok(r) => ActionOutcome {
                result: "failed",
                detail: format!("POST {url} answered {}", r.status()),
            },
            Err(e) => ActionOutcome {
                result: "failed",
                detail: format!("POST {url} failed: {e}"),
            },
        }
    }
}
