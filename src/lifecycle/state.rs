//! The daemon's life as an explicit state machine.

use crate::config::Event;

/// Where the daemon is; each state is also the event its hooks run for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Starting,
    Started,
    Failed,
    Stopping,
    Interrupted,
    Terminating,
}

/// What can happen to the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Every domain is up and its `started` hooks succeeded.
    InitDone,
    /// Init failed, timed out, or a `started` hook failed.
    InitFailed,
    /// SIGTERM or SIGINT.
    Signal,
    /// A spot interruption notice.
    Notice,
    /// Auto Scaling terminates the instance.
    Termination,
    /// A rebalance recommendation or scheduled maintenance: hooks run, the
    /// watch goes on.
    News,
}

impl State {
    /// The next state, or `None` when `input` cannot happen in this state.
    pub fn next(self, input: Input) -> Option<State> {
        use Input::*;
        use State::*;
        match (self, input) {
            (Starting, InitDone) => Some(Started),
            (Starting | Started, InitFailed) => Some(Failed),
            (Starting | Started, Signal) => Some(Stopping),
            // A notice during init cancels it: the deadline is what counts.
            (Starting | Started, Notice) => Some(Interrupted),
            (Starting | Started, Termination) => Some(Terminating),
            (Started, News) => Some(Started),
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
            State::Started => Event::Started,
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

    #[test]
    fn normal_life() {
        assert_eq!(Starting.next(InitDone), Some(Started));
        assert_eq!(
            Started.next(News),
            Some(Started),
            "news keeps the daemon watching"
        );
        assert_eq!(Started.next(Notice), Some(Interrupted));
        assert_eq!(Started.next(Signal), Some(Stopping));
        assert_eq!(Started.next(Termination), Some(Terminating));
    }

    #[test]
    fn failures_notices_and_signals_during_init() {
        assert_eq!(Starting.next(InitFailed), Some(Failed));
        assert_eq!(Starting.next(Signal), Some(Stopping));
        assert_eq!(Starting.next(Notice), Some(Interrupted));
        assert_eq!(Starting.next(Termination), Some(Terminating));
        // A started hook that fails happens after Started.
        assert_eq!(Started.next(InitFailed), Some(Failed));
        // News is only watched for once the daemon is up.
        assert_eq!(Starting.next(News), None);
    }

    #[test]
    fn final_states_have_no_way_out() {
        for s in [Failed, Stopping, Interrupted, Terminating] {
            assert!(s.is_final());
            for i in [InitDone, InitFailed, Signal, Notice, Termination, News] {
                assert_eq!(s.next(i), None, "{s:?} + {i:?}");
            }
        }
        assert_eq!(Started.next(InitDone), None);
    }
}
