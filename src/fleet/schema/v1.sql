-- agentwal fleet schema, version 1: the shared work queue, the shared
-- idempotency-key store, and the functions that change them. Every state
-- change of an item happens inside one of these functions (one round trip,
-- one transaction, the item's row locked first), so the fencing rules live in
-- one place and cannot be bypassed by a client that forgot a WHERE clause.

CREATE TABLE agentwal_fleet_items (
    key          text PRIMARY KEY,
    payload      text        NOT NULL,
    state        text        NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'in_flight', 'done', 'dead', 'in_doubt')),
    attempts     integer     NOT NULL DEFAULT 0,
    -- Fencing token of the current (or last) lease; from one global sequence,
    -- so it only grows.
    fence        bigint      NOT NULL DEFAULT 0,
    lease_owner  text,
    lease_until  timestamptz,
    available_at timestamptz NOT NULL DEFAULT now(),
    -- The effect key that made the item in doubt.
    doubt_effect text,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agentwal_fleet_items_pending ON agentwal_fleet_items (available_at, key)
    WHERE state = 'pending';
CREATE INDEX agentwal_fleet_items_leased ON agentwal_fleet_items (lease_until)
    WHERE state = 'in_flight';
CREATE SEQUENCE agentwal_fleet_fence;

CREATE TABLE agentwal_fleet_keys (
    key        text PRIMARY KEY,
    item_key   text        NOT NULL,
    fence      bigint      NOT NULL,
    worker     text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('intent', 'settled')),
    result     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    settled_at timestamptz
);
CREATE INDEX agentwal_fleet_keys_item ON agentwal_fleet_keys (item_key);

-- Claim up to p_limit items: expired leases first (a worker died or stalled),
-- then pending items whose backoff has passed. Each claim takes a new fence.
-- An expired lease on an item out of attempts goes to the dead letters.
CREATE FUNCTION agentwal_fleet_claim(p_worker text, p_lease_ms bigint, p_limit integer,
                                     p_max_attempts integer)
RETURNS TABLE (c_key text, c_payload text, c_fence bigint, c_attempts integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_lease interval := make_interval(secs => p_lease_ms / 1000.0);
    v_got integer := 0;
BEGIN
    UPDATE agentwal_fleet_items i
       SET state = 'dead', lease_owner = NULL, lease_until = NULL, updated_at = now(),
           last_error = 'lease expired on the last allowed attempt (worker killed or stalled)'
      FROM (SELECT k.key FROM agentwal_fleet_items k
             WHERE k.state = 'in_flight' AND k.lease_until < now()
               AND k.attempts >= p_max_attempts
             FOR UPDATE SKIP LOCKED) d
     WHERE i.key = d.key;

    RETURN QUERY
    UPDATE agentwal_fleet_items i
       SET state = 'in_flight', fence = nextval('agentwal_fleet_fence'), lease_owner = p_worker,
           lease_until = now() + v_lease, attempts = i.attempts + 1, updated_at = now()
      FROM (SELECT k.key FROM agentwal_fleet_items k
             WHERE k.state = 'in_flight' AND k.lease_until < now()
             ORDER BY k.lease_until LIMIT p_limit
             FOR UPDATE SKIP LOCKED) c
     WHERE i.key = c.key
    RETURNING i.key, i.payload, i.fence, i.attempts;
    GET DIAGNOSTICS v_got = ROW_COUNT;
    IF v_got >= p_limit THEN
        RETURN;
    END IF;

    RETURN QUERY
    UPDATE agentwal_fleet_items i
       SET state = 'in_flight', fence = nextval('agentwal_fleet_fence'), lease_owner = p_worker,
           lease_until = now() + v_lease, attempts = i.attempts + 1, updated_at = now()
      FROM (SELECT k.key FROM agentwal_fleet_items k
             WHERE k.state = 'pending' AND k.available_at <= now()
             ORDER BY k.available_at, k.key LIMIT (p_limit - v_got)
             FOR UPDATE SKIP LOCKED) c
     WHERE i.key = c.key
    RETURNING i.key, i.payload, i.fence, i.attempts;
END $$;

-- Record the intent of a fleet-tracked effect (never_repeat / reconcile)
-- BEFORE it runs. Outcomes: 'fresh' (recorded for this fence: run it),
-- 'settled' (reuse c_result, do not run), 'in_doubt' (another lease recorded
-- the intent and never settled it: do not run), 'fenced' (this lease is no
-- longer the item's current one: stop), 'no_item'. With p_mark_doubt an
-- in-doubt key also moves the item to 'in_doubt' in the same transaction.
CREATE FUNCTION agentwal_fleet_intent(p_item text, p_fence bigint, p_key text, p_worker text,
                                      p_mark_doubt boolean)
RETURNS TABLE (c_outcome text, c_result text)
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_fence bigint;
    e agentwal_fleet_keys%ROWTYPE;
BEGIN
    SELECT i.state, i.fence INTO v_state, v_fence
      FROM agentwal_fleet_items i WHERE i.key = p_item FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_item'::text, NULL::text;
        RETURN;
    END IF;
    IF v_fence <> p_fence OR v_state <> 'in_flight' THEN
        RETURN QUERY SELECT 'fenced'::text, NULL::text;
        RETURN;
    END IF;
    SELECT * INTO e FROM agentwal_fleet_keys k WHERE k.key = p_key;
    IF FOUND THEN
        IF e.state = 'settled' THEN
            RETURN QUERY SELECT 'settled'::text, e.result;
        ELSIF e.fence = p_fence THEN
            -- Our own intent, recorded by a call whose reply was lost.
            RETURN QUERY SELECT 'fresh'::text, NULL::text;
        ELSE
            IF p_mark_doubt THEN
                UPDATE agentwal_fleet_items
                   SET state = 'in_doubt', doubt_effect = p_key, lease_owner = NULL,
                       lease_until = NULL, updated_at = now(),
                       last_error = format('effect %s: intent recorded by worker %s (fence %s), outcome never recorded',
                                           p_key, e.worker, e.fence)
                 WHERE key = p_item;
            END IF;
            RETURN QUERY SELECT 'in_doubt'::text, NULL::text;
        END IF;
        RETURN;
    END IF;
    INSERT INTO agentwal_fleet_keys (key, item_key, fence, worker, state)
    VALUES (p_key, p_item, p_fence, p_worker, 'intent');
    RETURN QUERY SELECT 'fresh'::text, NULL::text;
END $$;

-- A reconcile probe said an in-doubt effect did not happen: the current lease
-- takes the intent over (it will run the effect itself).
CREATE FUNCTION agentwal_fleet_takeover(p_item text, p_fence bigint, p_key text, p_worker text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_fence bigint;
BEGIN
    SELECT i.state, i.fence INTO v_state, v_fence
      FROM agentwal_fleet_items i WHERE i.key = p_item FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'no_item';
    END IF;
    IF v_fence <> p_fence OR v_state <> 'in_flight' THEN
        RETURN 'fenced';
    END IF;
    UPDATE agentwal_fleet_keys SET fence = p_fence, worker = p_worker
     WHERE key = p_key AND state = 'intent';
    RETURN 'ok';
END $$;

-- Record outcomes of effects (always: an effect that happened is a fact,
-- whoever holds the lease now) and, with p_ack, finish the item if this lease
-- is still the current one. An item in doubt because of one of these keys
-- goes back to pending (the doubt is resolved: the effect did happen).
-- Returns 'acked', 'settled' (no ack asked, lease current) or 'fenced'.
CREATE FUNCTION agentwal_fleet_settle(p_item text, p_fence bigint, p_keys text[],
                                      p_results text[], p_ack boolean)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_fence bigint;
    v_doubt text;
BEGIN
    SELECT i.state, i.fence, i.doubt_effect INTO v_state, v_fence, v_doubt
      FROM agentwal_fleet_items i WHERE i.key = p_item FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'no_item';
    END IF;
    UPDATE agentwal_fleet_keys k
       SET state = 'settled', result = r.res, settled_at = now()
      FROM unnest(p_keys, p_results) AS r(key, res)
     WHERE k.key = r.key AND k.state = 'intent';
    IF v_state = 'in_doubt' AND v_doubt = ANY (p_keys) THEN
        UPDATE agentwal_fleet_items
           SET state = 'pending', doubt_effect = NULL, available_at = now(), updated_at = now(),
               last_error = NULL
         WHERE key = p_item;
        RETURN 'fenced';
    END IF;
    IF v_fence <> p_fence THEN
        RETURN 'fenced';
    END IF;
    IF v_state = 'done' AND p_ack THEN
        RETURN 'acked';
    END IF;
    IF v_state <> 'in_flight' THEN
        RETURN 'fenced';
    END IF;
    IF NOT p_ack THEN
        RETURN 'settled';
    END IF;
    UPDATE agentwal_fleet_items
       SET state = 'done', lease_owner = NULL, lease_until = NULL, updated_at = now(),
           last_error = NULL
     WHERE key = p_item;
    RETURN 'acked';
END $$;

-- A failed attempt: back to pending after a backoff, or to the dead letters
-- once out of attempts. Returns 'retry', 'dead' or 'fenced'.
CREATE FUNCTION agentwal_fleet_nack(p_item text, p_fence bigint, p_error text,
                                    p_backoff_ms bigint, p_max_attempts integer)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_fence bigint;
    v_attempts integer;
BEGIN
    SELECT i.state, i.fence, i.attempts INTO v_state, v_fence, v_attempts
      FROM agentwal_fleet_items i WHERE i.key = p_item FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'no_item';
    END IF;
    IF v_fence <> p_fence THEN
        RETURN 'fenced';
    END IF;
    IF v_state = 'pending' THEN
        RETURN 'retry';
    ELSIF v_state = 'dead' THEN
        RETURN 'dead';
    ELSIF v_state <> 'in_flight' THEN
        RETURN 'fenced';
    END IF;
    IF v_attempts >= p_max_attempts THEN
        UPDATE agentwal_fleet_items
           SET state = 'dead', lease_owner = NULL, lease_until = NULL, last_error = p_error,
               updated_at = now()
         WHERE key = p_item;
        RETURN 'dead';
    END IF;
    UPDATE agentwal_fleet_items
       SET state = 'pending', lease_owner = NULL, lease_until = NULL, last_error = p_error,
           available_at = now() + make_interval(secs => p_backoff_ms / 1000.0), updated_at = now()
     WHERE key = p_item;
    RETURN 'retry';
END $$;

-- An operator's decision on an item in doubt: the effect happened (its
-- result is recorded and reused) or it did not (the intent is dropped and the
-- effect may run again). Either way the item goes back to pending.
CREATE FUNCTION agentwal_fleet_resolve(p_item text, p_happened boolean, p_result text)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_state text;
    v_doubt text;
BEGIN
    SELECT i.state, i.doubt_effect INTO v_state, v_doubt
      FROM agentwal_fleet_items i WHERE i.key = p_item FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'no_item';
    END IF;
    IF v_state <> 'in_doubt' THEN
        RETURN 'not_in_doubt';
    END IF;
    IF p_happened THEN
        UPDATE agentwal_fleet_keys SET state = 'settled', result = p_result, settled_at = now()
         WHERE key = v_doubt AND state = 'intent';
    ELSE
        DELETE FROM agentwal_fleet_keys WHERE key = v_doubt AND state = 'intent';
    END IF;
    UPDATE agentwal_fleet_items
       SET state = 'pending', doubt_effect = NULL, available_at = now(), updated_at = now(),
           last_error = NULL
     WHERE key = p_item;
    RETURN 'ok';
END $$;
