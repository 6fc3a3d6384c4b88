-- Orders keep their fills as running sums, added to by each batch's new trades, instead
-- of being summed again from `trades` for every batch (the writer's cost grew with the
-- table). `filled_notional` is Σ price × quantity of the order's trades: the average
-- fill price is filled_notional / filled_quantity.
ALTER TABLE orders ADD COLUMN filled_notional NUMERIC NOT NULL DEFAULT 0;
-- Room in each page for an order's updates (fills, closing), which change no indexed
-- column: they stay heap-only (HOT) and touch no index.
ALTER TABLE orders SET (fillfactor = 80);

UPDATE orders o SET filled_notional = f.notional
FROM (
    SELECT id, sum(price * quantity) AS notional FROM (
        SELECT buyer_order_id AS id, price, quantity FROM trades
        UNION ALL
        SELECT seller_order_id, price, quantity FROM trades
    ) t GROUP BY id
) f
WHERE o.id = f.id;

-- Fills and closings read before the order they belong to (topics are read
-- independently): folded into the order when it is stored, then deleted. Empty in the
-- steady state.
CREATE TABLE pending_order_changes (
    order_id         UUID NOT NULL,
    filled           NUMERIC NOT NULL,
    notional         NUMERIC NOT NULL,
    at               TIMESTAMPTZ NOT NULL,
    reason           TEXT
);
CREATE INDEX pending_order_changes_order ON pending_order_changes (order_id);

-- Nothing looks trades up by order any more; a trade's row is found by its id, by symbol
-- and time, or from the order's running sums.
DROP INDEX trades_buyer_order;
DROP INDEX trades_seller_order;
