//! Telling a service manager how the process is doing: systemd's `Type=notify` protocol (through
//! the sd-notify crate), a datagram to the socket the manager names in `NOTIFY_SOCKET`.
//! `ready` once the process serves (its listeners bound, its services running), `stopping` when it
//! begins to stop, and `watchdog`, which sends `WATCHDOG=1` every half of the unit's `WatchdogSec`
//! while the process says it is healthy, so a process stuck without crashing is restarted. A
//! process not started by a service manager has no `NOTIFY_SOCKET`, and each of these does
//! nothing.

use std::future::Future;
use std::time::Duration;

/// The process serves.
pub fn ready() {
    notify(&[sd_notify::NotifyState::Ready]);
}

/// The process begins to stop (the manager then waits for it instead of calling it hung).
pub fn stopping() {
    notify(&[sd_notify::NotifyState::Stopping]);
}

fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// How often to tell the manager the process is alive, when it asks (`WatchdogSec`): half its
/// interval, as systemd recommends.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Sends `WATCHDOG=1` every `watchdog_interval` while `healthy` answers true, until `stop`
/// completes; nothing when the manager asked for no watchdog.
pub async fn watchdog(healthy: impl Fn() -> bool, stop: impl Future<Output = ()>) {
    let Some(every) = watchdog_interval() else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {
                if healthy() {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
    }
}
