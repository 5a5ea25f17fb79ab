//! Builds the prompt sent to the LLM: the system prompt, then the most recent turns of the
//! session that fit both a message window and the model's context, oldest first. Pure: no I/O,
//! no knowledge of the LLM client.
//!
//! The context is budgeted in estimated tokens: a token per `bytes_per_token` bytes of text
//! (3 by default; real tokenizers average about 4 bytes per token on English text, so the
//! estimate runs high) plus [`TOKENS_PER_MESSAGE`] for the chat template around each message.
//! The prompt may use what `max_tokens` leaves of the context. The oldest turns go first; the
//! system prompt and the newest message always stay (a single message is bounded by
//! `API_MAX_MESSAGE_CHARS`).

use crate::config::Config;
use crate::db::messages::Message;
use crate::llm::PromptMessage;

/// What a chat template adds around one message (`<|im_start|>role\n … <|im_end|>\n`),
/// rounded up.
const TOKENS_PER_MESSAGE: usize = 8;

/// How much history a prompt may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// At most this many messages of history (the newest included).
    pub messages: usize,
    /// At most this many estimated tokens for the whole prompt.
    pub tokens: usize,
    /// Bytes of text counted as one token.
    pub bytes_per_token: usize,
}

impl Budget {
    /// The budget the configuration allows: the context minus the reply's `max_tokens`.
    pub fn of(config: &Config) -> Budget {
        Budget {
            messages: config.limits.history_messages,
            tokens: config
                .llm
                .context_tokens
                .saturating_sub(config.llm.max_tokens) as usize,
            bytes_per_token: config.llm.bytes_per_token.max(1) as usize,
        }
    }

    /// The estimated tokens of one message, template included (rounded up, so never low).
    fn estimate(&self, content: &str) -> usize {
        content.len().div_ceil(self.bytes_per_token) + TOKENS_PER_MESSAGE
    }
}

/// The system prompt followed by the newest messages of `history` (oldest first) that fit
/// `budget`. The newest message is kept even when it alone is over the budget.
pub fn build(system_prompt: &str, history: &[Message], budget: &Budget) -> Vec<PromptMessage> {
    let mut spent = budget.estimate(system_prompt);
    let mut kept: Vec<&Message> = Vec::new();
    for message in history
        .iter()
        .rev()
        .filter(|m| !m.content.is_empty())
        .take(budget.messages)
    {
        spent += budget.estimate(&message.content);
        if spent > budget.tokens && !kept.is_empty() {
            break;
        }
        kept.push(message);
    }
    std::iter::once(PromptMessage {
        role: "system".to_owned(),
        content: system_prompt.to_owned(),
    })
    .chain(kept.iter().rev().map(|m| PromptMessage {
        role: m.role.clone(),
        content: m.content.clone(),
    }))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> Message {
        Message {
            id: uuid::Uuid::new_v4(),
            role: role.into(),
            content: content.into(),
            status: "complete".into(),
            prompt_tokens: None,
            completion_tokens: None,
            created_at: chrono::Utc::now(),
        }
    }

    fn turns(contents: &[String]) -> Vec<Message> {
        contents
            .iter()
            .enumerate()
            .map(|(i, c)| message(if i % 2 == 0 { "user" } else { "assistant" }, c))
            .collect()
    }

    const ROOMY: usize = 1_000_000;

    fn budget(messages: usize, tokens: usize) -> Budget {
        Budget {
            messages,
            tokens,
            bytes_per_token: 3,
        }
    }

    #[test]
    fn keeps_the_system_prompt_and_the_newest_window() {
        let history = turns(&(0..5).map(|i| format!("m{i}")).collect::<Vec<_>>());
        let prompt = build("sys", &history, &budget(2, ROOMY));
        let contents: Vec<_> = prompt.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["sys", "m3", "m4"]);
        assert_eq!(prompt[0].role, "system");
        assert_eq!(prompt[1].role, "assistant");
        assert_eq!(build("sys", &history, &budget(50, ROOMY)).len(), 6);
    }

    #[test]
    fn the_oldest_messages_go_first_when_the_context_is_short() {
        // Each message is 300 bytes: 100 estimated tokens + 8 for the template.
        let history = turns(
            &(0..20)
                .map(|i| format!("{i:03}").repeat(100))
                .collect::<Vec<_>>(),
        );
        // The system prompt costs 9; 9 + 4 × 108 = 441 fits 450, a fifth message would not.
        let prompt = build("sys", &history, &budget(20, 450));
        let firsts: Vec<_> = prompt.iter().map(|m| &m.content[..3]).collect();
        assert_eq!(firsts, ["sys", "016", "017", "018", "019"]);
        let spent: usize = prompt
            .iter()
            .map(|m| m.content.len().div_ceil(3) + TOKENS_PER_MESSAGE)
            .sum();
        assert!(spent <= 450, "{spent}");
    }

    #[test]
    fn the_newest_message_stays_even_when_it_alone_is_over_the_budget() {
        let history = turns(&["old".to_owned(), "x".repeat(10_000)]);
        let prompt = build("sys", &history, &budget(20, 100));
        assert_eq!(prompt.len(), 2);
        assert_eq!(prompt[1].content.len(), 10_000);
    }

    #[test]
    fn the_estimate_counts_bytes_so_wide_characters_cost_more() {
        let b = budget(20, ROOMY);
        assert_eq!(b.estimate("abc"), 1 + TOKENS_PER_MESSAGE);
        // Three 3-byte characters: 9 bytes, 3 tokens, never underestimated as 1.
        assert_eq!(b.estimate("日本語"), 3 + TOKENS_PER_MESSAGE);
    }

    #[test]
    fn the_budget_is_the_context_minus_the_reply() {
        let config = crate::config::Config::from_lookup(|name| {
            match name {
                "DATABASE_URL" => Some("postgres://db/app"),
                "JWT_SECRET" => Some("0123456789abcdef0123456789abcdef"),
                "LLM_BASE_URL" => Some("http://llm/v1"),
                "LLM_MODEL" => Some("m"),
                _ => None,
            }
            .map(str::to_owned)
        })
        .expect("config");
        let b = Budget::of(&config);
        assert_eq!(
            (b.tokens, b.messages, b.bytes_per_token),
            (8192 - 512, 20, 3)
        );
    }
}
