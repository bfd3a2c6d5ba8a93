-- Web chat: one row per conversation a widget opened, and the log of what agents and the bot
-- said in it (the customer's own messages travel as inbound messages). `seq` numbers the log
-- per conversation, densely; sockets deliver in that order and resume after the last seen.
CREATE TABLE chat_conversations (
    id             uuid PRIMARY KEY,
    customer_email text NOT NULL,
    customer_name  text,
    next_seq       bigint NOT NULL DEFAULT 1,
    delivered_seq  bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE chat_log (
    conversation_id uuid NOT NULL REFERENCES chat_conversations(id),
    seq             bigint NOT NULL,
    reply_id        uuid NOT NULL UNIQUE,
    author          text NOT NULL,
    text            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, seq)
);
