//! Builds the prompt sent to the LLM: the system prompt, then the most recent turns of the
//! session (a bounded window), oldest first. Pure: no I/O, no knowledge of the LLM client.

use crate::db::messages::Message;
use crate::llm::PromptMessage;

/// The system prompt followed by the last `window` messages of `history` (oldest first).
pub fn build(system_prompt: &str, history: &[Message], window: usize) -> Vec<PromptMessage> {
    let start = history.len().saturating_sub(window);
    std::iter::once(PromptMessage {
        role: "system".to_owned(),
        content: system_prompt.to_owned(),
    })
    .chain(
        history[start..]
            .iter()
            .filter(|m| !m.content.is_empty())
            .map(|m| PromptMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            }),
    )
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

    #[test]
    fn keeps_the_system_prompt_and_the_newest_window() {
        let history: Vec<_> = (0..5)
            .map(|i| {
                message(
                    if i % 2 == 0 { "user" } else { "assistant" },
                    &format!("m{i}"),
                )
            })
            .collect();
        let prompt = build("sys", &history, 2);
        let contents: Vec<_> = prompt.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["sys", "m3", "m4"]);
        assert_eq!(prompt[0].role, "system");
        assert_eq!(build("sys", &history, 50).len(), 6);
    }
}
