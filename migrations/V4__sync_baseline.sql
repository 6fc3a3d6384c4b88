-- The synchronous baseline (EXCHANGE_PERSISTENCE=sync): the design this exchange
-- replaces, kept in the same binary to be measured against. Every order is written here
-- in one transaction before its answer. Nothing else reads these tables.
CREATE TABLE sync_balances (
    user_id TEXT PRIMARY KEY,
    total NUMERIC NOT NULL DEFAULT 0,
    locked NUMERIC NOT NULL DEFAULT 0
);

CREATE TABLE sync_orders (
    id UUID PRIMARY KEY,
    user_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL,
    price NUMERIC,
    quantity NUMERIC NOT NULL,
    filled_quantity NUMERIC NOT NULL,
    status TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE sync_trades (
    id UUID PRIMARY KEY,
    symbol TEXT NOT NULL,
    price NUMERIC NOT NULL,
    quantity NUMERIC NOT NULL,
    buyer_order_id UUID NOT NULL,
    seller_order_id UUID NOT NULL,
    executed_at_ms BIGINT NOT NULL
);

CREATE TABLE sync_positions (
    user_id TEXT NOT NULL,
    symbol TEXT NOT NULL,
    size NUMERIC NOT NULL,
    cost NUMERIC NOT NULL,
    margin NUMERIC NOT NULL,
    realized_pnl NUMERIC NOT NULL,
    PRIMARY KEY (user_id, symbol)
);
