-- Conditional orders (stop-loss and take-profit), one row each, as their latest status
-- change left them: every change is a `ConditionalOrderUpdated` result, and only a newer
-- one (by the symbol's sequence number) replaces a row, so results read again after a
-- restart change nothing.
CREATE TABLE conditional_orders (
    conditional_id   UUID PRIMARY KEY,
    user_id          TEXT NOT NULL,
    symbol           TEXT NOT NULL,
    side             TEXT NOT NULL,
    type             TEXT NOT NULL,
    trigger_price    NUMERIC NOT NULL,
    working_type     TEXT NOT NULL,
    price            NUMERIC,
    quantity         NUMERIC,
    -- A trailing stop's callback rate (percent); its trigger_price is its activation
    -- price, 0 for none.
    callback_rate    NUMERIC,
    close_position   BOOLEAN NOT NULL,
    reduce_only      BOOLEAN NOT NULL,
    client_order_id  TEXT,
    status           TEXT NOT NULL,
    order_id         UUID,
    reason           TEXT,
    seq              BIGINT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX conditional_orders_user ON conditional_orders (user_id, created_at DESC);
