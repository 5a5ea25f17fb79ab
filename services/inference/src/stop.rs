//! Stop strings: decides which generated text may be shown and where generation must end, so
//! that no part of a stop string ever reaches a client, not even split over two tokens.
//!
//! Pure text logic; it must never know about tokens, the model or the wire format.

/// Text held back until it is known not to start a stop string.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What to do after some text was generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Show `emit` (possibly empty) and keep generating.
    Continue { emit: String },
    /// A stop string was found: show `emit`, the text before it, and finish.
    Stopped { emit: String },
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|stop| !stop.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Takes newly decoded text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.pending.push_str(text);
        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min();
        if let Some(position) = earliest {
            let emit = self.pending[..position].to_owned();
            self.pending.clear();
            return StopOutcome::Stopped { emit };
        }
        let keep = self.held_suffix_len();
        let emit_len = self.pending.len() - keep;
        let rest = self.pending.split_off(emit_len);
        let emit = std::mem::replace(&mut self.pending, rest);
        StopOutcome::Continue { emit }
    }

    /// The text still held back, released when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest suffix of `pending` that begins some stop string.
    fn held_suffix_len(&self) -> usize {
        self.pending
            .char_indices()
            .map(|(start, _)| start)
            .find(|&start| {
                let suffix = &self.pending[start..];
                self.stops.iter().any(|stop| stop.starts_with(suffix))
            })
            .map_or(0, |start| self.pending.len() - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cont(emit: &str) -> StopOutcome {
        StopOutcome::Continue { emit: emit.into() }
    }

    #[test]
    fn text_without_stops_passes_through() {
        let mut matcher = StopMatcher::new(vec![]);
        assert_eq!(matcher.push("hello"), cont("hello"));
        assert_eq!(matcher.flush(), "");
    }

    #[test]
    fn a_stop_split_over_pushes_never_leaks() {
        let mut matcher = StopMatcher::new(vec!["END".into()]);
        assert_eq!(matcher.push("abcE"), cont("abc"));
        assert_eq!(matcher.push("N"), cont(""));
        assert_eq!(
            matcher.push("Dxyz"),
            StopOutcome::Stopped { emit: "".into() }
        );
    }

    #[test]
    fn a_false_start_is_released() {
        let mut matcher = StopMatcher::new(vec!["END".into()]);
        assert_eq!(matcher.push("xE"), cont("x"));
        assert_eq!(matcher.push("Nd"), cont("ENd"));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let mut matcher = StopMatcher::new(vec!["b".into(), "cd".into()]);
        assert_eq!(
            matcher.push("acdb"),
            StopOutcome::Stopped { emit: "a".into() }
        );
    }

    #[test]
    fn held_text_is_flushed_at_the_end() {
        let mut matcher = StopMatcher::new(vec!["éclair".into()]);
        assert_eq!(matcher.push("café"), cont("caf"));
        assert_eq!(matcher.flush(), "é");
    }
}
