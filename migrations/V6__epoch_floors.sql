-- The newest epoch the cold-storage writer has read on each symbol's command log: a
-- command numbered below it that comes later in the log never counted (a record a broker
-- persisted late, or a second process still writing; see README "Kafka"). Kept with the
-- rows, so a restarted writer goes on applying it.
CREATE TABLE epoch_floors (
    topic   TEXT NOT NULL,    -- the (prefixed) orders.submitted topic
    symbol  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (topic, symbol)
);
