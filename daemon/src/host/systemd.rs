//! systemd, where it is the source of truth: readiness, progress and the
//! watchdog over `$NOTIFY_SOCKET` (the sd-notify crate), and logind's
//! shutdown inhibitor over D-Bus (zbus) for a graceful node shutdown.
//! Without systemd every call is a quiet no-op.

use sd_notify::NotifyState;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Send notifications; quiet without systemd (no `$NOTIFY_SOCKET`). A
/// failed send is only logged at debug: systemd's view of us is advisory
/// and must never stop the daemon.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// STATUS= ends at a newline in the protocol; keep the status one line.
fn one_line(status: &str) -> String {
    status.replace('\n', " ")
}

pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
}

pub fn status(status: &str) {
    notify(&[NotifyState::Status(&one_line(status))]);
}

pub fn stopping(status: &str) {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status(&one_line(status)),
    ]);
}

/// The watchdog period systemd expects pings within, if it is on for us
/// (`WATCHDOG_USEC`, and `WATCHDOG_PID` naming this process if set).
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|p| !p.is_zero())
}

/// Ping the watchdog at half its period from the async runtime, for as
/// long as `healthy` says so: a wedged runtime (or a failing check) stops
/// the pings and systemd restarts the daemon.
pub async fn watchdog<F, Fut>(cancel: CancellationToken, healthy: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let Some(period) = watchdog_period() else {
        return;
    };
    let mut tick = tokio::time::interval(period / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if healthy().await {
            notify(&[NotifyState::Watchdog]);
        }
    }
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Login1Manager {
    fn inhibit(
        &self,
        what: &str,
        who: &str,
        why: &str,
        mode: &str,
    ) -> zbus::Result<zbus::zvariant::OwnedFd>;

    #[zbus(signal)]
    fn prepare_for_shutdown(&self, start: bool) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Systemd1Manager {
    #[zbus(property)]
    fn system_state(&self) -> zbus::Result<String>;
}

/// Whether systemd is taking the host down (SystemState "stopping"). A
/// root `systemctl poweroff` does not go through logind, so the agent
/// also asks this when it is told to stop.
pub async fn host_shutting_down() -> bool {
    let state = tokio::time::timeout(Duration::from_secs(2), async {
        let conn = zbus::Connection::system().await.ok()?;
        let manager = Systemd1ManagerProxy::new(&conn).await.ok()?;
        manager.system_state().await.ok()
    })
    .await
    .ok()
    .flatten();
    state.as_deref() == Some("stopping")
}

/// A shutdown logind announced: finish the node's part, then say `done`
/// so the inhibitor lock is released and the shutdown proceeds.
pub struct Shutdown {
    pub reason: String,
    pub done: oneshot::Sender<()>,
}

/// Hold a logind "delay" inhibitor lock and turn `PrepareForShutdown(true)`
/// into a [`Shutdown`] on `tx`; the lock is released once the receiver
/// answers (or after `max_delay`), and taken again if the shutdown is
/// cancelled. Without a system bus or logind: one log line, then nothing.
pub async fn shutdown_inhibitor(
    tx: mpsc::Sender<Shutdown>,
    max_delay: Duration,
    cancel: CancellationToken,
) {
    use futures_util::StreamExt;
    let setup = async {
        let conn = zbus::Connection::system().await?;
        let manager = Login1ManagerProxy::new(&conn).await?;
        let signals = manager.receive_prepare_for_shutdown().await?;
        Ok::<_, zbus::Error>((conn, manager, signals))
    };
    let (_conn, manager, mut signals) = match setup.await {
        Ok(x) => x,
        Err(e) => {
            tracing::info!(error = %e, "no logind on the system bus; graceful node shutdown is off");
            return;
        }
    };
    let take = || async {
        manager
            .inhibit(
                "shutdown",
                "rk3s",
                "mark the node unschedulable and close its tunnel",
                "delay",
            )
            .await
    };
    let mut lock = match take().await {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!(error = %e, "logind refused a shutdown inhibitor lock; graceful node shutdown is off");
            return;
        }
    };
    tracing::info!("holding a logind shutdown inhibitor lock for graceful node shutdown");
    loop {
        let signal = tokio::select! {
            _ = cancel.cancelled() => return,
            s = signals.next() => s,
        };
        let Some(signal) = signal else { return };
        let start = signal.args().map(|a| a.start).unwrap_or(false);
        if start {
            tracing::info!("the host is shutting down: marking the node unschedulable");
            let (done, wait) = oneshot::channel();
            let reason = "the host is shutting down (logind PrepareForShutdown)".to_string();
            if tx.send(Shutdown { reason, done }).await.is_ok() {
                let _ = tokio::time::timeout(max_delay, wait).await;
            }
            // Dropping the descriptor releases the lock.
            lock = None;
            tracing::info!("graceful node shutdown done; released the inhibitor lock");
        } else if lock.is_none() {
            tracing::info!("shutdown cancelled; taking the inhibitor lock again");
            lock = take().await.ok();
        }
    }
}
