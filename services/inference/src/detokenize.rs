//! Incremental detokenisation: turns one token id at a time into the text it adds, never
//! splitting a UTF-8 character (byte-level tokens can end mid-character) and keeping the
//! spacing a whole-sequence decode would give.
//!
//! It decodes a short window of recent tokens twice and emits the difference, as vLLM and TGI
//! do. The window is bounded: tokens that decode to nothing (special tokens) or never complete a
//! character are given up after [`MAX_PENDING`] of them, so a stream of them costs constant time
//! per token. It must never know about stop strings, sampling or the wire format.

use std::sync::Arc;

use tokenizers::Tokenizer;

/// Tokens held back while they decode to nothing or to an unfinished character. A UTF-8
/// character spans at most four byte-level tokens, so more than this never completes one.
const MAX_PENDING: usize = 4;

/// Most ids a push decodes: the context of the last emitted piece plus the pending ones.
#[cfg(test)]
const MAX_WINDOW: usize = 2 * MAX_PENDING;

pub struct IncrementalDecoder {
    tokenizer: Arc<Tokenizer>,
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// End of the text already emitted.
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn new(tokenizer: Arc<Tokenizer>) -> IncrementalDecoder {
        IncrementalDecoder {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// Adds a token and returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, tokenizers::Error> {
        self.ids.push(id);
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        let complete = full.len() > prefix.len() && !full.ends_with('\u{FFFD}');
        if complete || self.ids.len() - self.read_offset >= MAX_PENDING {
            let added = full.get(prefix.len()..).unwrap_or_default().to_owned();
            self.advance();
            return Ok(added);
        }
        Ok(String::new())
    }

    /// Marks everything pushed as emitted and forgets ids before the new window.
    fn advance(&mut self) {
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.ids.drain(..self.prefix_offset);
        self.read_offset -= self.prefix_offset;
        self.prefix_offset = 0;
    }

    /// The text of tokens still held back (an unfinished character), at the end of generation.
    pub fn flush(&mut self) -> Result<String, tokenizers::Error> {
        let prefix = self.decode(self.prefix_offset, self.read_offset)?;
        let full = self.decode(self.prefix_offset, self.ids.len())?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or_default().to_owned())
    }

    #[cfg(test)]
    fn held_ids(&self) -> usize {
        self.ids.len() - self.prefix_offset
    }

    fn decode(&self, start: usize, end: usize) -> Result<String, tokenizers::Error> {
        self.tokenizer.decode(&self.ids[start..end], true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Arc<Tokenizer> {
        let json = crate::tiny_model::tokenizer_json();
        Arc::new(Tokenizer::from_bytes(json.to_string().as_bytes()).expect("tokenizer loads"))
    }

    fn decode_one_by_one(tokenizer: &Arc<Tokenizer>, ids: &[u32]) -> (Vec<String>, String) {
        let mut decoder = IncrementalDecoder::new(tokenizer.clone());
        let mut pieces: Vec<String> = ids
            .iter()
            .map(|&id| decoder.push(id).expect("decodes"))
            .collect();
        pieces.push(decoder.flush().expect("flushes"));
        let joined = pieces.concat();
        (pieces, joined)
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let tokenizer = tokenizer();
        let text = "héllo 世界 🎉!";
        let ids = tokenizer
            .encode(text, false)
            .expect("encodes")
            .get_ids()
            .to_vec();
        assert!(
            ids.len() > text.chars().count(),
            "byte-level tokens: {ids:?}"
        );
        let (pieces, joined) = decode_one_by_one(&tokenizer, &ids);
        assert_eq!(joined, text);
        assert!(pieces.iter().all(|piece| !piece.contains('\u{FFFD}')));
    }

    /// Tokens that decode to nothing (special tokens, skipped) must not grow the window that
    /// every push decodes: a stream of them would make each push slower and hold every id.
    #[test]
    fn tokens_that_decode_to_nothing_keep_the_window_bounded() {
        let tokenizer = tokenizer();
        let silent = tokenizer
            .token_to_id("<|endoftext|>")
            .expect("special token");
        let mut decoder = IncrementalDecoder::new(tokenizer.clone());
        for _ in 0..1000 {
            assert_eq!(decoder.push(silent).expect("decodes"), "");
            assert!(
                decoder.held_ids() <= MAX_WINDOW,
                "window grew to {} ids",
                decoder.held_ids()
            );
        }
        let ids = tokenizer
            .encode("still 世界", false)
            .expect("encodes")
            .get_ids()
            .to_vec();
        let mut text: String = ids
            .iter()
            .map(|&id| decoder.push(id).expect("decodes"))
            .collect();
        text.push_str(&decoder.flush().expect("flushes"));
        assert_eq!(text, "still 世界");
    }

    #[test]
    fn an_unfinished_character_is_flushed_at_the_end() {
        let tokenizer = tokenizer();
        let ids = tokenizer
            .encode("a世", false)
            .expect("encodes")
            .get_ids()
            .to_vec();
        let cut = &ids[..ids.len() - 1];
        let (pieces, joined) = decode_one_by_one(&tokenizer, cut);
        assert_eq!(pieces.last().map(String::as_str), Some("\u{FFFD}"));
        assert_eq!(joined, "a\u{FFFD}");
    }
}
