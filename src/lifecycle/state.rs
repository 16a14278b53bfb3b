//! The daemon's life as an explicit state machine: the daemon's loop is one
//! match on the state, each phase returning the input that moves it on.

use crate::config::Event;

/// Where the daemon is; each state is also the event its hooks run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Bringing every domain up: volumes, their hooks, records.
    Starting,
    /// Every domain is up; the `started` hooks run.
    Started,
    /// READY: watching IMDS (hooks of the `started` event, already run).
    Watching,
    Failed,
    Stopping,
    Interrupted,
    Terminating,
}

/// What can happen to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Every domain is up.
    BroughtUp,
    /// The `started` hooks of every domain succeeded.
    InitDone,
    /// A domain failed, init timed out, or a `started` hook failed.
    InitFailed,
    /// SIGTERM or SIGINT.
    Signal,
    /// A spot interruption notice.
    Notice,
    /// Auto Scaling terminates the instance.
    Termination,
    /// A rebalance recommendation or scheduled maintenance, a drain, or
    /// idleness that only reports: hooks ran, the watch goes on.
    News,
    /// Idle with `idle.action` stop or terminate: the daemon ends as on a
    /// stop.
    Idle,
}

impl State {
    /// The next state, or `None` when `input` cannot happen in this state.
    pub fn next(self, input: Input) -> Option<State> {
        use Input::*;
        use State::*;
        match (self, input) {
            (Starting, BroughtUp) => Some(Started),
            (Started, InitDone) => Some(Watching),
            (Starting | Started, InitFailed) => Some(Failed),
            (Starting | Started | Watching, Signal) => Some(Stopping),
            // A notice during init cancels it: the deadline is what counts.
            (Starting | Started | Watching, Notice) => Some(Interrupted),
            (Starting | Started | Watching, Termination) => Some(Terminating),
            (Watching, News) => Some(Watching),
            (Watching, Idle) => Some(Stopping),
            _ => None,
        }
    }

    /// A state with no way out: the daemon runs its hooks and exits.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Failed | State::Stopping | State::Interrupted | State::Terminating
        )
    }

    pub fn event(self) -> Event {
        match self {
            State::Starting => Event::Starting,
            State::Started | State::Watching => Event::Started,
            State::Failed => Event::Failed,
            State::Stopping => Event::Stopping,
            State::Interrupted => Event::Interrupted,
            State::Terminating => Event::Terminating,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Input::*;
    use super::State::*;

    const INPUTS: [super::Input; 8] = [
        BroughtUp,
        InitDone,
        InitFailed,
        Signal,
        Notice,
        Termination,
        News,
        Idle,
    ];

    #[test]
    fn normal_life() {
        assert_eq!(Starting.next(BroughtUp), Some(Started));
        assert_eq!(Started.next(InitDone), Some(Watching));
        assert_eq!(
            Watching.next(News),
            Some(Watching),
            "news keeps the daemon watching"
        );
        assert_eq!(Watching.next(Notice), Some(Interrupted));
        assert_eq!(Watching.next(Signal), Some(Stopping));
        assert_eq!(Watching.next(Termination), Some(Terminating));
        assert_eq!(Watching.next(Idle), Some(Stopping), "idle ends as a stop");
    }

    #[test]
    fn failures_notices_and_signals_during_init() {
        for s in [Starting, Started] {
            assert_eq!(s.next(InitFailed), Some(Failed));
            assert_eq!(s.next(Signal), Some(Stopping));
            assert_eq!(s.next(Notice), Some(Interrupted));
            assert_eq!(s.next(Termination), Some(Terminating));
            // News and idleness are only watched for once the daemon is up.
            assert_eq!(s.next(News), None);
            assert_eq!(s.next(Idle), None);
        }
        assert_eq!(Starting.next(InitDone), None, "started hooks come first");
        assert_eq!(Watching.next(InitFailed), None, "init is over");
    }

    #[test]
    fn final_states_have_no_way_out() {
        for s in [Failed, Stopping, Interrupted, Terminating] {
            assert!(s.is_final());
            for i in INPUTS {
                assert_eq!(s.next(i), None, "{s:?} + {i:?}");
            }
        }
        for s in [Starting, Started, Watching] {
            assert!(!s.is_final());
        }
    }
}
