-- Cold storage: the exchange's history, written by the sidecar's DB writer from the event
-- log in batches. Money and quantities are NUMERIC (exact), in USDT and in the symbol's
-- units as the API shows them. Ids are the API's UUIDs.

-- One row per order: what it was submitted with, where in the log, and (kept current
-- from its trades and its closing) its filled quantity and status.
CREATE TABLE orders (
    id               UUID PRIMARY KEY,
    user_id          TEXT NOT NULL,          -- account id: the 16 hex digits of the API key
    symbol           TEXT NOT NULL,
    client_order_id  TEXT,
    side             TEXT NOT NULL,
    type             TEXT NOT NULL,
    time_in_force    TEXT,
    price            NUMERIC,
    quantity         NUMERIC NOT NULL,
    filled_quantity  NUMERIC NOT NULL DEFAULT 0,
    leverage         INTEGER NOT NULL,
    reduce_only      BOOLEAN NOT NULL,
    status           TEXT NOT NULL DEFAULT 'NEW',
    reason           TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    -- The OrderSubmitted record's place in orders.submitted (a CommandVoided names it).
    kafka_partition  INTEGER NOT NULL,
    kafka_offset     BIGINT NOT NULL
);
CREATE INDEX orders_user_time ON orders (user_id, created_at DESC);
CREATE INDEX orders_log_place ON orders (kafka_partition, kafka_offset);

-- How orders ended unfilled or partly filled (orders.cancelled). Kept apart from
-- `orders` because topics are read independently: a closing may be read before the
-- order's submission, and the order's status is recomputed from both.
CREATE TABLE order_closures (
    order_id         UUID PRIMARY KEY,
    reason           TEXT NOT NULL,
    closed_at        TIMESTAMPTZ NOT NULL
);

-- One row per trade.
CREATE TABLE trades (
    id               UUID PRIMARY KEY,
    symbol           TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    price            NUMERIC NOT NULL,
    quantity         NUMERIC NOT NULL,
    taker_side       TEXT NOT NULL,
    buyer_id         TEXT NOT NULL,
    buyer_order_id   UUID NOT NULL,
    buyer_fee        NUMERIC NOT NULL,
    buyer_pnl        NUMERIC NOT NULL,
    seller_id        TEXT NOT NULL,
    seller_order_id  UUID NOT NULL,
    seller_fee       NUMERIC NOT NULL,
    seller_pnl       NUMERIC NOT NULL,
    executed_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX trades_symbol_time ON trades (symbol, executed_at DESC);
CREATE INDEX trades_buyer_order ON trades (buyer_order_id);
CREATE INDEX trades_seller_order ON trades (seller_order_id);

-- Balances per user and currency at a known log position (the checkpoint hot state is
-- rebuilt from, with the log's tail after it).
CREATE TABLE accounts (
    user_id          TEXT NOT NULL,
    currency         TEXT NOT NULL,
    total            NUMERIC NOT NULL,
    locked           NUMERIC NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, currency)
);

-- Positions at the same log position as `accounts`.
CREATE TABLE positions (
    user_id          TEXT NOT NULL,
    symbol           TEXT NOT NULL,
    size             NUMERIC NOT NULL,
    entry_cost       NUMERIC NOT NULL,
    margin           NUMERIC NOT NULL,
    realized_pnl     NUMERIC NOT NULL,
    fees             NUMERIC NOT NULL,
    leverage         INTEGER NOT NULL,
    PRIMARY KEY (user_id, symbol)
);

-- Where the writer is in each Kafka partition it consumes: the offset after the last
-- record whose rows are committed, written in the same transaction as those rows.
CREATE TABLE writer_offsets (
    topic            TEXT NOT NULL,
    kafka_partition  INTEGER NOT NULL,
    next_offset      BIGINT NOT NULL,
    PRIMARY KEY (topic, kafka_partition)
);
