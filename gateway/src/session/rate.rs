//! The per-session message rate limit: a token bucket refilled at `max_messages_per_sec` with a
//! burst of one second's worth. A message over the rate is answered with an error reply and not
//! handled; the bucket then goes into debt, and a session whose debt reaches another second's
//! worth (it kept sending at about twice the rate or more after being told) is closed with 4029.
//! Eight bytes per session: it lives in every session's task.

/// What to do with one incoming message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: handle it.
    Allow,
    /// Over the rate: answer with an error, do not handle it.
    Refuse,
    /// Abuse: close the session.
    Close,
}

/// A session's bucket.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    /// Messages it may still send; negative while in debt.
    tokens: f32,
    /// Node clock (ms, wrapping) when `tokens` was last brought up to date.
    at_ms: u32,
}

impl Rate {
    /// A full bucket at `now_ms` for `per_sec` messages per second.
    pub fn new(per_sec: u32, now_ms: u64) -> Self {
        Rate {
            tokens: per_sec as f32,
            at_ms: now_ms as u32,
        }
    }

    /// Account for one message at `now_ms` (0 `per_sec`: no limit).
    pub fn check(&mut self, per_sec: u32, now_ms: u64) -> Verdict {
        if per_sec == 0 {
            return Verdict::Allow;
        }
        let now = now_ms as u32;
        let rate = per_sec as f32;
        let elapsed = now.wrapping_sub(self.at_ms) as f32 / 1000.0;
        self.at_ms = now;
        self.tokens = (self.tokens + elapsed * rate).min(rate) - 1.0;
        if self.tokens >= 0.0 {
            Verdict::Allow
        } else if self.tokens > -rate {
            Verdict::Refuse
        } else {
            Verdict::Close
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_then_close() {
        let mut r = Rate::new(10, 0);
        assert!((0..10).all(|_| r.check(10, 0) == Verdict::Allow));
        // Over the rate: refused, up to another second's worth, then closed.
        assert!((0..9).all(|_| r.check(10, 0) == Verdict::Refuse));
        assert_eq!(r.check(10, 0), Verdict::Close);
    }

    #[test]
    fn a_steady_sender_at_the_rate_is_never_refused() {
        let mut r = Rate::new(10, 0);
        for i in 0..1000u64 {
            assert_eq!(r.check(10, i * 100), Verdict::Allow, "message {i}");
        }
    }

    #[test]
    fn refused_senders_recover_after_slowing_down() {
        let mut r = Rate::new(10, 0);
        for _ in 0..15 {
            r.check(10, 0);
        }
        assert_eq!(r.check(10, 0), Verdict::Refuse);
        // One quiet second repays the debt and refills the bucket.
        assert_eq!(r.check(10, 1_500), Verdict::Allow);
        assert_eq!(Rate::new(0, 0).check(0, 0), Verdict::Allow);
    }
}
