-- Users, chat sessions with their messages, and uploaded files' metadata.
CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE chat_sessions (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX chat_sessions_user_updated ON chat_sessions (user_id, updated_at DESC, id);

CREATE TABLE messages (
    id                UUID PRIMARY KEY,
    session_id        UUID NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    seq               BIGSERIAL NOT NULL,
    role              TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content           TEXT NOT NULL,
    -- 'complete', or 'partial' when the client left or the LLM failed mid-answer.
    status            TEXT NOT NULL DEFAULT 'complete' CHECK (status IN ('complete', 'partial')),
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX messages_session_seq ON messages (session_id, seq);

CREATE TABLE files (
    id           UUID PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size_bytes   BIGINT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX files_user ON files (user_id, created_at DESC);
