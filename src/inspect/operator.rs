//! The operator commands of `wal-inspect`: `resolve`, `abort`, `approve`
//! and `queue --redrive|--purge-dead`. The only commands besides `repair`
//! that write.
//!
//! Each one records a durable, attributed decision through the library
//! call that backs it ([`crate::journal::Journal::resolve`],
//! [`crate::journal::Journal::request_abort`],
//! [`crate::journal::Journal::decide_approval`],
//! [`crate::queue::WorkQueue::redrive`], [`crate::queue::WorkQueue::purge_dead`]):
//!
//! * **agent stopped**: the command opens the journal (or queue) itself,
//!   taking the owner lock, applies the decision and closes it;
//! * **agent running** (the lock is held): the command drops it into the
//!   directory's operator inbox ([`crate::log::inbox`]) and waits up to
//!   `wait` for the owner, which polls its inbox, to apply it and reply.
//!   If no owner picks it up in time the command is withdrawn (nothing
//!   changes) and the error says so.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::error::{Error, Result};
use super::open::Inspection;
use crate::journal::{Journal, JournalOptions, OperatorCommand, OperatorReply};
use crate::log::inbox::Inbox;
use crate::queue::{queue_dir, QueueCommand, QueueOptions, QueueReply, WorkQueue};

/// What an operator command did.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorResult {
    /// `"direct"` (the agent was stopped: applied by this command) or
    /// `"owner"` (applied by the running agent through its inbox).
    pub applied: &'static str,
    /// What changed, in plain words.
    pub message: String,
    /// Queue items changed (queue commands).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<u64>,
}

fn is_locked(e: &crate::log::Error) -> bool {
    matches!(e, crate::log::Error::Locked { .. })
}

/// Submits `body` to `inbox` and waits for the owner's reply.
fn via_inbox(inbox: &Inbox, body: &[u8], wait: Duration) -> Result<Vec<u8>> {
    let io = |e| Error::io("use the operator inbox", inbox.dir(), e);
    let id = inbox.submit(body).map_err(io)?;
    if let Some(r) = inbox.wait_reply(&id, wait).map_err(io)? {
        return Ok(r);
    }
    if inbox.withdraw(&id).map_err(io)? {
        return Err(Error::OperatorRefused {
            message: format!(
                "the directory is locked by a running owner, but it did not pick the command up within {wait:?} (an owner opened without its inbox, or stuck); the command was withdrawn, nothing changed; stop the agent and run the command again"
            ),
        });
    }
    // Claimed: the owner is applying it; give it a little longer.
    match inbox.wait_reply(&id, wait).map_err(io)? {
        Some(r) => Ok(r),
        None => Err(Error::OperatorRefused {
            message: format!(
                "the running owner claimed the command but did not reply within {:?}; check the outcome with `wal-inspect show`",
                wait * 2
            ),
        }),
    }
}

/// Applies a journal operator command (`resolve`, `abort`, `approve`) to
/// the journal in `dir`: directly when no process owns it, through the
/// owner's inbox when one does.
pub fn journal_command(
    dir: &Path,
    cmd: &OperatorCommand,
    wait: Duration,
) -> Result<OperatorResult> {
    // Refuse a path that is not a journal before anything is created.
    Inspection::open(dir)?;
    match Journal::open(dir, JournalOptions::default()) {
        Ok(j) => {
            let r = j.apply_operator(cmd);
            j.close()?;
            match r {
                Ok(message) => Ok(OperatorResult {
                    applied: "direct",
                    message,
                    ids: Vec::new(),
                }),
                Err(e @ crate::journal::Error::OperatorRefused { .. }) => {
                    Err(Error::OperatorRefused {
                        message: e.to_string(),
                    })
                }
                Err(e) => Err(e.into()),
            }
        }
        Err(crate::journal::Error::Log(e)) if is_locked(&e) => {
            let body = serde_json::to_vec(cmd).expect("commands serialize");
            let reply = via_inbox(&Inbox::new(dir), &body, wait)?;
            let r: OperatorReply =
                serde_json::from_slice(&reply).map_err(|e| Error::OperatorRefused {
                    message: format!("the owner's reply is not readable: {e}"),
                })?;
            if r.ok {
                Ok(OperatorResult {
                    applied: "owner",
                    message: r.message,
                    ids: Vec::new(),
                })
            } else {
                Err(Error::OperatorRefused { message: r.message })
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Applies a queue operator command (`redrive`, `purge_dead`) to the queue
/// of the journal in `dir`, directly or through the running owner.
pub fn queue_command(dir: &Path, cmd: &QueueCommand, wait: Duration) -> Result<OperatorResult> {
    let qdir = queue_dir(dir);
    if !qdir.is_dir() {
        return Err(Error::NotAJournal {
            path: qdir,
            reason: "no work queue in this journal directory".into(),
        });
    }
    match WorkQueue::open(dir, QueueOptions::default()) {
        Ok(q) => {
            let r = match cmd.command.as_str() {
                "redrive" => q.redrive(&cmd.ids, &cmd.by),
                _ => q.purge_dead(&cmd.ids, &cmd.by),
            };
            q.close()?;
            match r {
                Ok(ids) => Ok(OperatorResult {
                    applied: "direct",
                    message: format!(
                        "{} {} dead letter(s){}, by {:?}",
                        if cmd.command == "redrive" {
                            "moved back to pending (fresh attempts):"
                        } else {
                            "purged:"
                        },
                        ids.len(),
                        if ids.is_empty() {
                            String::new()
                        } else {
                            format!(" {ids:?}")
                        },
                        cmd.by
                    ),
                    ids,
                }),
                Err(e @ crate::queue::Error::InvalidArgument(_)) => Err(Error::OperatorRefused {
                    message: e.to_string(),
                }),
                Err(e) => Err(e.into()),
            }
        }
        Err(crate::queue::Error::Log(e)) if is_locked(&e) => {
            let body = serde_json::to_vec(cmd).expect("commands serialize");
            let reply = via_inbox(&Inbox::new(&qdir), &body, wait)?;
            let r: QueueReply =
                serde_json::from_slice(&reply).map_err(|e| Error::OperatorRefused {
                    message: format!("the owner's reply is not readable: {e}"),
                })?;
            if r.ok {
                Ok(OperatorResult {
                    applied: "owner",
                    message: r.message,
                    ids: r.ids,
                })
            } else {
                Err(Error::OperatorRefused { message: r.message })
            }
        }
        Err(e) => Err(e.into()),
    }
}
