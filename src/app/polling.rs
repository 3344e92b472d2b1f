//! The live counters' polling decisions, pure: when to ask for figures,
//! how long to wait after failures, what the status line says, which
//! answers are adopted and what a screen reader hears.
//!
//! [`Poller`] takes the events the page sees (a timer tick, an answer, a
//! failed request, the pause button) and returns a [`Step`]: what the
//! component must do. It holds no signal, no timer and no request, so every
//! transition is tested here without a browser; `live.rs` only wires
//! signals, the interval and the server functions to it.

use crate::format;
use crate::stats::NetworkStats;

/// Screen-reader summaries are announced at most this often.
const ANNOUNCE_EVERY_MS: i64 = 30_000;
/// Longest wait between polls while reconnecting.
const MAX_BACKOFF_MS: u64 = 60_000;
const DAY_MS: i64 = 86_400_000;
/// Timer ticks a poll may stay unanswered before it counts as failed.
const STALLED_TICKS: u32 = 3;

const LOST_CONTACT: &str =
    "Lost contact with the controller. Showing the last figures while reconnecting.";
const PAUSED: &str = "Live updates paused.";
const RESUMED: &str = "Live updates resumed.";

/// Wait before the next poll after `failures` failed polls in a row: the
/// poll interval, doubling per failure up to eight times it (at most a
/// minute, never less than the interval).
pub fn backoff_ms(poll_ms: u64, failures: u32) -> u64 {
    if failures == 0 {
        return poll_ms;
    }
    let cap = poll_ms.saturating_mul(8).min(MAX_BACKOFF_MS).max(poll_ms);
    poll_ms.saturating_mul(1 << failures.min(16)).min(cap)
}

/// How often the page refreshes, for people: `5s`, `500ms`, `1m`.
pub fn every_text(poll_ms: u64) -> String {
    if poll_ms < 1000 {
        format!("{poll_ms}ms")
    } else {
        format::duration_ms(i64::try_from(poll_ms).unwrap_or(i64::MAX))
    }
}

/// What a screen reader hears about the figures, now and then.
fn summary(s: &NetworkStats) -> String {
    format!(
        "{} nodes online, {} builds running, {} queued; {} builds finished in total.",
        format::count(s.nodes_online),
        format::count(s.active_builds),
        format::count(s.builds_queued),
        format::count(s.total_builds),
    )
}

/// Where the live updates stand, as the status line shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// Polling every interval, the last poll answered.
    Live,
    /// The visitor paused the updates.
    Paused,
    /// The last poll failed or stalled; polling again with back-off.
    Reconnecting,
}

impl Connection {
    /// The status line's `data-state`.
    pub fn key(self) -> &'static str {
        match self {
            Connection::Live => "live",
            Connection::Paused => "paused",
            Connection::Reconnecting => "reconnecting",
        }
    }

    /// The status line's text, for a page polling every `poll_ms`.
    pub fn text(self, poll_ms: u64) -> String {
        match self {
            Connection::Live => format!("Updating every {}", every_text(poll_ms)),
            Connection::Paused => "Updates paused".to_string(),
            Connection::Reconnecting => "Reconnecting…".to_string(),
        }
    }
}

/// Names one poll, so that an answer to a poll given up on is told apart
/// from the answer to the poll that replaced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

/// What the component must do after an event. The rest of what it shows
/// (connection, delay, pause) it reads from the [`Poller`].
#[must_use]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Step {
    /// Ask for the figures and hand the answer back with this ticket.
    pub send: Option<Ticket>,
    /// Put these figures on screen.
    pub show: Option<NetworkStats>,
    /// Fetch the chart's days again: a build finished or the UTC day turned.
    pub refresh_chart: bool,
    /// Say this in the live region.
    pub announce: Option<String>,
}

/// A poll sent and not yet answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Awaited {
    ticket: Ticket,
    /// Ticks seen since it was sent.
    ticks: u32,
}

/// The live counters' state: the figures on screen, failures in a row, the
/// poll awaited and whether the visitor paused.
#[derive(Clone, Debug, PartialEq)]
pub struct Poller {
    poll_ms: u64,
    shown: NetworkStats,
    /// `generated_at` of the figures last announced (or first shown).
    announced_at: i64,
    paused: bool,
    failures: u32,
    awaited: Option<Awaited>,
    last_ticket: u64,
}

impl Poller {
    /// A page showing `first`, polling every `poll_ms`.
    pub fn new(first: NetworkStats, poll_ms: u64) -> Self {
        Poller {
            poll_ms,
            announced_at: first.generated_at,
            shown: first,
            paused: false,
            failures: 0,
            awaited: None,
            last_ticket: 0,
        }
    }

    /// Where the live updates stand.
    pub fn connection(&self) -> Connection {
        if self.paused {
            Connection::Paused
        } else if self.failures > 0 {
            Connection::Reconnecting
        } else {
            Connection::Live
        }
    }

    /// Time between ticks, ms: the poll interval, backed off after failures.
    pub fn delay_ms(&self) -> u64 {
        backoff_ms(self.poll_ms, self.failures)
    }

    /// Whether the visitor paused the updates (the timer then stops).
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The timer fired: poll, unless a poll is still awaited. One that
    /// stays unanswered for [`STALLED_TICKS`] ticks (a dropped connection)
    /// must not stop the page for good: it counts as failed and a new poll
    /// replaces it. The timer is stopped while paused, so a late tick does
    /// nothing then.
    pub fn tick(&mut self) -> Step {
        if self.paused {
            return Step::default();
        }
        let mut step = Step::default();
        if let Some(awaited) = &mut self.awaited {
            awaited.ticks += 1;
            if awaited.ticks < STALLED_TICKS {
                return step;
            }
            step.announce = self.lose_contact();
        }
        self.last_ticket = self.last_ticket.wrapping_add(1);
        let ticket = Ticket(self.last_ticket);
        self.awaited = Some(Awaited { ticket, ticks: 0 });
        step.send = Some(ticket);
        step
    }

    /// The poll `ticket` answered with `next`. Adopted unless the poll was
    /// given up on or the visitor paused meanwhile.
    pub fn answered(&mut self, ticket: Ticket, next: NetworkStats) -> Step {
        if !self.settle(ticket) {
            return Step::default();
        }
        let refresh_chart = next.total_builds != self.shown.total_builds
            || next.generated_at.div_euclid(DAY_MS) != self.shown.generated_at.div_euclid(DAY_MS);
        let mut announce = None;
        if self.failures > 0 {
            self.failures = 0;
            announce = Some(format!("Reconnected. {}", summary(&next)));
            self.announced_at = next.generated_at;
        } else if next.generated_at.saturating_sub(self.announced_at) >= ANNOUNCE_EVERY_MS
            && summary(&next) != summary(&self.shown)
        {
            announce = Some(summary(&next));
            self.announced_at = next.generated_at;
        }
        self.shown = next.clone();
        Step {
            send: None,
            show: Some(next),
            refresh_chart,
            announce,
        }
    }

    /// The poll `ticket` failed: the figures stay, the page reconnects with
    /// back-off. Ignored if the poll was given up on or the visitor paused.
    pub fn failed(&mut self, ticket: Ticket) -> Step {
        if !self.settle(ticket) {
            return Step::default();
        }
        Step {
            announce: self.lose_contact(),
            ..Step::default()
        }
    }

    /// The pause button. Resuming polls at once, as a tick would.
    pub fn toggle_pause(&mut self) -> Step {
        self.paused = !self.paused;
        if self.paused {
            return Step {
                announce: Some(PAUSED.to_string()),
                ..Step::default()
            };
        }
        let step = self.tick();
        Step {
            announce: step.announce.or(Some(RESUMED.to_string())),
            ..step
        }
    }

    /// Ends the wait for `ticket`; whether its answer is to be used.
    fn settle(&mut self, ticket: Ticket) -> bool {
        if self.awaited.map(|a| a.ticket) != Some(ticket) {
            return false; // given up on: a newer poll is under way
        }
        self.awaited = None;
        !self.paused
    }

    /// Counts a failure; what to announce, only when contact was just lost.
    fn lose_contact(&mut self) -> Option<String> {
        let first = self.failures == 0;
        self.failures = self.failures.saturating_add(1);
        first.then(|| LOST_CONTACT.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: u64 = 5_000;
    /// 2026-12-02T12:00:00Z, ms.
    const NOON: i64 = 1_796_212_800_000;

    fn figures(total_builds: u64, generated_at: i64) -> NetworkStats {
        NetworkStats {
            nodes_online: 3,
            builds_queued: 1,
            active_builds: 2,
            total_builds,
            generated_at,
            ..NetworkStats::default()
        }
    }

    fn poller() -> Poller {
        Poller::new(figures(10, NOON), POLL)
    }

    /// A tick that sends, and its ticket.
    fn send(p: &mut Poller) -> Ticket {
        let step = p.tick();
        assert_eq!(step.announce, None);
        step.send.expect("a tick with nothing awaited sends a poll")
    }

    /// A poller with `n` failed polls behind it.
    fn failing(n: u32) -> Poller {
        let mut p = poller();
        for _ in 0..n {
            let t = send(&mut p);
            let _ = p.failed(t);
        }
        p
    }

    fn said(text: &str) -> Option<String> {
        Some(text.to_string())
    }

    /// Back-off doubles per failure and stops at eight intervals.
    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(5_000, 0), 5_000);
        assert_eq!(backoff_ms(5_000, 1), 10_000);
        assert_eq!(backoff_ms(5_000, 2), 20_000);
        assert_eq!(backoff_ms(5_000, 3), 40_000);
        assert_eq!(backoff_ms(5_000, 9), 40_000);
        assert_eq!(backoff_ms(1_000, 30), 8_000);
        assert_eq!(backoff_ms(30_000, 5), 60_000);
        assert_eq!(backoff_ms(120_000, 5), 120_000);
        assert_eq!(backoff_ms(u64::MAX, u32::MAX), u64::MAX);
    }

    /// Intervals read naturally, sub-second ones too.
    #[test]
    fn every_reads_naturally() {
        assert_eq!(every_text(5_000), "5s");
        assert_eq!(every_text(500), "500ms");
        assert_eq!(every_text(90_000), "1m 30s");
    }

    /// Each connection state has its `data-state` key and its status text.
    #[test]
    fn connection_key_and_text() {
        let table = [
            (Connection::Live, "live", "Updating every 1s"),
            (Connection::Paused, "paused", "Updates paused"),
            (Connection::Reconnecting, "reconnecting", "Reconnecting…"),
        ];
        for (connection, key, text) in table {
            assert_eq!(connection.key(), key);
            assert_eq!(connection.text(1_000), text);
        }
    }

    /// A new page is live, unpaused, ticks every interval and awaits nothing.
    #[test]
    fn starts_live() {
        let p = poller();
        assert_eq!(p.connection(), Connection::Live);
        assert!(!p.paused());
        assert_eq!(p.delay_ms(), POLL);
        assert_eq!(p.awaited, None);
    }

    /// A tick with nothing awaited sends a poll with a fresh ticket and
    /// changes nothing on screen.
    #[test]
    fn tick_sends_a_poll() {
        let mut p = poller();
        let step = p.tick();
        let first = step.send.expect("sends");
        assert_eq!(
            step,
            Step {
                send: Some(first),
                ..Step::default()
            }
        );
        let _ = p.answered(first, figures(10, NOON + 5_000));
        assert_ne!(send(&mut p), first, "every poll has its own ticket");
        assert_eq!(p.connection(), Connection::Live);
    }

    /// The first and second ticks while a poll is awaited do nothing: no
    /// second request, no failure.
    #[test]
    fn ticks_wait_for_an_awaited_poll() {
        let mut p = poller();
        let _ = send(&mut p);
        for _ in 1..STALLED_TICKS {
            assert_eq!(p.tick(), Step::default());
            assert_eq!(p.connection(), Connection::Live);
            assert_eq!(p.delay_ms(), POLL);
        }
    }

    /// The third tick gives up on a stalled poll: it counts as a failure
    /// (announced, backed off, reconnecting) and a new poll replaces it.
    #[test]
    fn third_tick_gives_up_on_a_stalled_poll() {
        let mut p = poller();
        let stalled = send(&mut p);
        let _ = p.tick();
        let _ = p.tick();
        let step = p.tick();
        let fresh = step.send.expect("sends a new poll");
        assert_ne!(fresh, stalled);
        assert_eq!(step.announce, said(LOST_CONTACT));
        assert_eq!(step.show, None);
        assert_eq!(p.connection(), Connection::Reconnecting);
        assert_eq!(p.delay_ms(), 2 * POLL);
    }

    /// A stall while already reconnecting counts one more failure without a
    /// second announcement.
    #[test]
    fn stall_while_reconnecting_is_not_announced_again() {
        let mut p = failing(1);
        let _ = send(&mut p);
        let _ = p.tick();
        let _ = p.tick();
        let step = p.tick();
        assert!(step.send.is_some());
        assert_eq!(step.announce, None);
        assert_eq!(p.delay_ms(), 4 * POLL);
    }

    /// The answer of a poll given up on is ignored, success or failure, and
    /// the poll that replaced it is still awaited.
    #[test]
    fn answer_to_an_abandoned_poll_is_ignored() {
        let mut p = poller();
        let stalled = send(&mut p);
        let _ = p.tick();
        let _ = p.tick();
        let fresh = p.tick().send.expect("sends");
        let before = p.clone();
        assert_eq!(
            p.answered(stalled, figures(11, NOON + 9_000)),
            Step::default()
        );
        assert_eq!(p.failed(stalled), Step::default());
        assert_eq!(p, before);
        assert_eq!(p.connection(), Connection::Reconnecting);
        assert!(p.answered(fresh, figures(11, NOON + 9_000)).show.is_some());
    }

    /// A ticket never sent, or answered twice, changes nothing.
    #[test]
    fn unknown_or_repeated_ticket_is_ignored() {
        let mut p = poller();
        let t = send(&mut p);
        assert_eq!(p.answered(Ticket(99), figures(12, NOON)), Step::default());
        let _ = p.answered(t, figures(10, NOON + 5_000));
        let before = p.clone();
        assert_eq!(p.answered(t, figures(12, NOON + 6_000)), Step::default());
        assert_eq!(p.failed(t), Step::default());
        assert_eq!(p, before);
    }

    /// An answer while live is shown; unchanged build totals on the same
    /// UTC day leave the chart alone; within 30 s of the last announcement
    /// nothing is said. The next tick sends again.
    #[test]
    fn answer_is_shown() {
        let mut p = poller();
        let t = send(&mut p);
        let next = NetworkStats {
            nodes_online: 7,
            ..figures(10, NOON + 5_000)
        };
        assert_eq!(
            p.answered(t, next.clone()),
            Step {
                show: Some(next),
                ..Step::default()
            }
        );
        assert_eq!(p.connection(), Connection::Live);
        assert!(p.tick().send.is_some());
    }

    /// A finished build (the total changed) makes the chart stale.
    #[test]
    fn new_total_refreshes_the_chart() {
        let mut p = poller();
        let t = send(&mut p);
        assert!(p.answered(t, figures(11, NOON + 5_000)).refresh_chart);
        let t = send(&mut p);
        assert!(!p.answered(t, figures(11, NOON + 10_000)).refresh_chart);
    }

    /// The UTC day turning makes the chart stale even with the same total.
    #[test]
    fn new_day_refreshes_the_chart() {
        let midnight = NOON - NOON.rem_euclid(DAY_MS) + DAY_MS;
        let mut p = Poller::new(figures(10, midnight - 1), POLL);
        let t = send(&mut p);
        assert!(p.answered(t, figures(10, midnight)).refresh_chart);
        let t = send(&mut p);
        assert!(
            !p.answered(t, figures(10, midnight + DAY_MS - 1))
                .refresh_chart
        );
    }

    /// Changed figures are announced once 30 s have passed since the last
    /// announcement, and then not again for 30 s.
    #[test]
    fn changes_are_announced_at_most_every_30_s() {
        let mut p = poller();
        let t = send(&mut p);
        let step = p.answered(t, figures(11, NOON + ANNOUNCE_EVERY_MS - 1));
        assert_eq!(step.announce, None, "too soon");
        let t = send(&mut p);
        let step = p.answered(t, figures(12, NOON + ANNOUNCE_EVERY_MS));
        assert_eq!(
            step.announce,
            said("3 nodes online, 2 builds running, 1 queued; 12 builds finished in total.")
        );
        let t = send(&mut p);
        let step = p.answered(t, figures(13, NOON + 2 * ANNOUNCE_EVERY_MS - 1));
        assert_eq!(step.announce, None, "30 s count from the last announcement");
        let t = send(&mut p);
        let step = p.answered(t, figures(14, NOON + 2 * ANNOUNCE_EVERY_MS));
        assert!(step.announce.is_some());
    }

    /// Figures whose summary did not change are not announced, however
    /// late; the next change is announced at once.
    #[test]
    fn unchanged_summary_is_not_announced() {
        let mut p = poller();
        let t = send(&mut p);
        let same = NetworkStats {
            total_cpu_seconds: 99.0,
            builds_today: 4,
            ..figures(10, NOON + 10 * ANNOUNCE_EVERY_MS)
        };
        let step = p.answered(t, same.clone());
        assert_eq!(step.announce, None);
        assert_eq!(step.show, Some(same));
        let t = send(&mut p);
        let step = p.answered(t, figures(11, NOON + 10 * ANNOUNCE_EVERY_MS + 1));
        assert!(step.announce.is_some());
    }

    /// A failed poll keeps the figures, says contact was lost, and turns
    /// the page to reconnecting with the wait doubled.
    #[test]
    fn failure_keeps_figures_and_reconnects() {
        let mut p = poller();
        let t = send(&mut p);
        assert_eq!(
            p.failed(t),
            Step {
                announce: said(LOST_CONTACT),
                ..Step::default()
            }
        );
        assert_eq!(p.connection(), Connection::Reconnecting);
        assert_eq!(p.delay_ms(), 2 * POLL);
        assert_eq!(p.shown, figures(10, NOON));
    }

    /// Further failures are silent and double the wait up to eight
    /// intervals.
    #[test]
    fn failures_back_off_silently() {
        let mut p = failing(1);
        for (failures, delay) in [(2, 4 * POLL), (3, 8 * POLL), (4, 8 * POLL), (9, 8 * POLL)] {
            while p.failures < failures {
                let t = send(&mut p);
                assert_eq!(p.failed(t), Step::default());
            }
            assert_eq!(p.delay_ms(), delay);
            assert_eq!(p.connection(), Connection::Reconnecting);
        }
    }

    /// An answer after failures reconnects: live again, the interval back
    /// to normal, the figures shown and announced as a reconnection, which
    /// restarts the 30 s between announcements.
    #[test]
    fn answer_after_failures_reconnects() {
        let mut p = failing(3);
        let t = send(&mut p);
        let next = figures(10, NOON + 60_000);
        let step = p.answered(t, next.clone());
        assert_eq!(
            step,
            Step {
                show: Some(next),
                announce: said(
                    "Reconnected. 3 nodes online, 2 builds running, 1 queued; 10 builds finished in total."
                ),
                ..Step::default()
            }
        );
        assert_eq!(p.connection(), Connection::Live);
        assert_eq!(p.delay_ms(), POLL);
        let t = send(&mut p);
        let step = p.answered(t, figures(11, NOON + 60_000 + ANNOUNCE_EVERY_MS - 1));
        assert_eq!(step.announce, None);
    }

    /// Pausing says so, sends nothing and shows paused, even while
    /// reconnecting; the back-off is kept for when updates resume.
    #[test]
    fn pause() {
        for mut p in [poller(), failing(2)] {
            let delay = p.delay_ms();
            assert_eq!(
                p.toggle_pause(),
                Step {
                    announce: said(PAUSED),
                    ..Step::default()
                }
            );
            assert!(p.paused());
            assert_eq!(p.connection(), Connection::Paused);
            assert_eq!(p.delay_ms(), delay);
        }
    }

    /// A tick while paused (the timer is stopped, but one may be late)
    /// sends nothing and does not count toward a stall.
    #[test]
    fn tick_while_paused_does_nothing() {
        let mut p = poller();
        let _ = send(&mut p);
        let _ = p.toggle_pause();
        let before = p.clone();
        for _ in 0..5 {
            assert_eq!(p.tick(), Step::default());
        }
        assert_eq!(p, before);
    }

    /// An answer arriving while paused is dropped: the figures on screen
    /// stay as they were when the visitor paused.
    #[test]
    fn answer_while_paused_is_dropped() {
        let mut p = poller();
        let t = send(&mut p);
        let _ = p.toggle_pause();
        assert_eq!(p.answered(t, figures(11, NOON + 5_000)), Step::default());
        assert_eq!(p.shown, figures(10, NOON));
        assert_eq!(p.awaited, None, "the poll is no longer awaited");
    }

    /// A failure while paused is not counted.
    #[test]
    fn failure_while_paused_is_not_counted() {
        let mut p = poller();
        let t = send(&mut p);
        let _ = p.toggle_pause();
        assert_eq!(p.failed(t), Step::default());
        assert_eq!(p.failures, 0);
        let _ = p.toggle_pause();
        assert_eq!(p.connection(), Connection::Live);
    }

    /// Resuming says so and polls at once; the state is live again, or
    /// still reconnecting if polls were failing before the pause.
    #[test]
    fn resume_polls_at_once() {
        for (mut p, connection) in [
            (poller(), Connection::Live),
            (failing(2), Connection::Reconnecting),
        ] {
            let _ = p.toggle_pause();
            let step = p.toggle_pause();
            assert!(step.send.is_some());
            assert_eq!(step.announce, said(RESUMED));
            assert!(!p.paused());
            assert_eq!(p.connection(), connection);
        }
    }

    /// Resuming while a poll sent before the pause is still awaited counts
    /// as a tick: no second poll, and that poll's answer is adopted.
    #[test]
    fn resume_with_a_poll_awaited_waits_for_it() {
        let mut p = poller();
        let t = send(&mut p);
        let _ = p.toggle_pause();
        let step = p.toggle_pause();
        assert_eq!(
            step,
            Step {
                announce: said(RESUMED),
                ..Step::default()
            }
        );
        let next = figures(11, NOON + 5_000);
        assert_eq!(p.answered(t, next.clone()).show, Some(next));
    }

    /// Resuming on the tick that finds a poll stalled gives it up: the
    /// lost contact is what is said, and a new poll goes out.
    #[test]
    fn resume_on_a_stalled_poll_reports_lost_contact() {
        let mut p = poller();
        let stalled = send(&mut p);
        let _ = p.tick();
        let _ = p.tick();
        let _ = p.toggle_pause();
        let step = p.toggle_pause();
        let fresh = step.send.expect("sends");
        assert_ne!(fresh, stalled);
        assert_eq!(step.announce, said(LOST_CONTACT));
        assert_eq!(p.connection(), Connection::Reconnecting);
    }
}
