-- The perpetual's results: every funding payment, every liquidation, and each symbol's
-- latest index and mark price and insurance fund. Rows are keyed by the event that made
-- them, so a result republished after a restart adds nothing.
CREATE TABLE funding_payments (
    event_id      UUID PRIMARY KEY,
    user_id       TEXT NOT NULL,
    symbol        TEXT NOT NULL,
    amount        NUMERIC NOT NULL,
    funding_rate  NUMERIC NOT NULL,
    mark_price    NUMERIC NOT NULL,
    paid_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX funding_payments_user ON funding_payments (user_id, paid_at DESC);

CREATE TABLE liquidations (
    order_id              UUID PRIMARY KEY,
    user_id               TEXT NOT NULL,
    symbol                TEXT NOT NULL,
    side                  TEXT NOT NULL,
    quantity              NUMERIC NOT NULL,
    filled_quantity       NUMERIC NOT NULL,
    deleveraged_quantity  NUMERIC NOT NULL,
    to_insurance_fund     NUMERIC NOT NULL,
    liquidated_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX liquidations_user ON liquidations (user_id, liquidated_at DESC);

-- Prices and fund come from different topics, read independently: each is kept with
-- the sequence number of the event that set it, and only a newer one replaces it.
CREATE TABLE markets (
    symbol          TEXT PRIMARY KEY,
    price_seq       BIGINT NOT NULL DEFAULT -1,
    index_price     NUMERIC,
    mark_price      NUMERIC,
    fund_seq        BIGINT NOT NULL DEFAULT -1,
    insurance_fund  NUMERIC NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL
);
