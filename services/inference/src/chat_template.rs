//! The model's chat template (Jinja, from tokenizer_config.json) rendered with minijinja and
//! Python-compatible string methods, as transformers renders it.
//!
//! It turns messages into prompt text and nothing else; it must never tokenize or know the wire
//! format beyond a message's role and text.

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

const TEMPLATE_NAME: &str = "chat_template";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// A message as templates see it: `{role, content}` with the content as plain text.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
}

impl ChatTemplate {
    pub fn new(
        source: String,
        bos_token: String,
        eos_token: String,
    ) -> Result<ChatTemplate, minijinja::Error> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, source)?;
        Ok(ChatTemplate {
            env,
            bos_token,
            eos_token,
        })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[TemplateMessage]) -> Result<String, minijinja::Error> {
        self.env.get_template(TEMPLATE_NAME)?.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
    }
}

fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn chatml_renders_a_conversation() {
        let template = ChatTemplate::new(
            crate::tiny_model::CHAT_TEMPLATE.into(),
            String::new(),
            "<|im_end|>".into(),
        )
        .expect("parses");
        let prompt = template
            .render(&[message("system", "Be brief."), message("user", "Hi")])
            .expect("renders");
        assert_eq!(
            prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.strip() }}";
        let template =
            ChatTemplate::new(source.into(), String::new(), String::new()).expect("parses");
        assert_eq!(
            template
                .render(&[message("user", "  x ")])
                .expect("renders"),
            "x"
        );
        let error = template
            .render(&[message("system", "x")])
            .expect_err("raises");
        assert!(error.to_string().contains("first must be user"), "{error}");
    }
}
