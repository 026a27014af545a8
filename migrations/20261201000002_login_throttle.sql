-- Per-account login throttling, and idempotent refresh-token rotation inside the grace window.
--
-- Login throttling
-- ----------------
-- The edge limits logins per client address; a botnet has many addresses. This table limits
-- them per account, whatever address they come from. The key is SHA-256 of the username as
-- submitted (unknown usernames are throttled exactly like real ones, so the throttle does not
-- tell which accounts exist, and no attacker-chosen text is stored).
--
-- Every attempt is counted when it starts (app.login_attempt), before the password is hashed, so
-- concurrent attempts cannot all slip in under the bound. The first p_free consecutive failures
-- cost nothing; each attempt after them makes the account wait p_base · 2^k (k = 0, 1, …),
-- capped at p_max, before the next one is looked at. An attempt inside the wait gets
-- 429 + Retry-After and is not counted (a flood does not lengthen the wait). A success clears
-- the row. A failure streak older than a day is forgotten. So an attacker who stops leaves the
-- real user waiting at most p_max, and one who keeps going gets one guess per p_max per account.

CREATE TABLE app.login_throttle (
    account         bytea       PRIMARY KEY CHECK (octet_length(account) = 32),
    failures        integer     NOT NULL DEFAULT 0 CHECK (failures >= 0),
    next_allowed_at timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_throttle_updated_idx ON app.login_throttle (updated_at);

-- Not per-user data: reached only through the functions below (no grant to the app role).
ALTER TABLE app.login_throttle ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.login_throttle FORCE  ROW LEVEL SECURITY;
CREATE POLICY login_throttle_owner_role ON app.login_throttle TO portcullis_owner USING (true) WITH CHECK (true);
REVOKE ALL ON app.login_throttle FROM PUBLIC, portcullis_app;

-- Starts a login attempt for p_account. Returns 0 when the password may be checked now, else
-- the seconds until the account takes attempts again.
CREATE FUNCTION app.login_attempt(p_account bytea, p_free integer, p_base_secs float8, p_max_secs float8)
    RETURNS float8
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t app.login_throttle%ROWTYPE;
    streak integer;
BEGIN
    INSERT INTO app.login_throttle AS l (account) VALUES (p_account) ON CONFLICT (account) DO NOTHING;
    SELECT * INTO t FROM app.login_throttle l WHERE l.account = p_account FOR UPDATE;
    IF t.next_allowed_at > now() THEN
        RETURN extract(epoch FROM t.next_allowed_at - now());
    END IF;
    streak := CASE WHEN t.updated_at < now() - interval '1 day' THEN 0 ELSE t.failures END + 1;
    UPDATE app.login_throttle l
       SET failures        = streak,
           next_allowed_at = CASE WHEN streak > p_free
                                  THEN now() + make_interval(secs => least(p_base_secs * 2.0 ^ least(streak - p_free - 1, 30), p_max_secs))
                                  ELSE now() END,
           updated_at      = now()
     WHERE l.account = p_account;
    -- Keep the table to accounts tried within the last day.
    DELETE FROM app.login_throttle l WHERE l.updated_at < now() - interval '1 day' AND l.next_allowed_at < now();
    RETURN 0;
END
$$;

-- The password was right: the account's streak is over.
CREATE FUNCTION app.login_succeeded(p_account bytea)
    RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
    DELETE FROM app.login_throttle l WHERE l.account = p_account;
$$;

REVOKE ALL ON FUNCTION app.login_attempt(bytea, integer, float8, float8) FROM PUBLIC;
REVOKE ALL ON FUNCTION app.login_succeeded(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.login_attempt(bytea, integer, float8, float8) TO portcullis_app;
GRANT EXECUTE ON FUNCTION app.login_succeeded(bytea) TO portcullis_app;

-- Refresh rotation
-- ----------------
-- The successor of a refresh token is derived from it with a server key (the origin computes
-- HMAC(key, token)), so presenting the same token twice names the same successor. Inside
-- p_grace of a rotation, a second presentation of the rotated token gets that same successor
-- ('replayed') as long as the successor itself is unused: both holders now share one token,
-- and whichever rotates it second after the window is a detected reuse. A rotated token whose
-- successor was already rotated or revoked, or any reuse after the window, revokes the family.

DROP FUNCTION app.rotate_refresh_token(bytea, bytea, timestamptz, interval);

CREATE FUNCTION app.rotate_refresh_token(p_token_hash bytea,
                                         p_new_token_hash bytea,
                                         p_new_expires_at timestamptz,
                                         p_grace interval)
    RETURNS TABLE (outcome text, user_id uuid, family_id uuid)
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t app.refresh_tokens%ROWTYPE;
    child app.refresh_tokens%ROWTYPE;
BEGIN
    SELECT * INTO t FROM app.refresh_tokens r WHERE r.token_hash = p_token_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::text, NULL::uuid, NULL::uuid;
        RETURN;
    END IF;
    IF t.revoked_at IS NOT NULL THEN
        RETURN QUERY SELECT 'revoked'::text, NULL::uuid, NULL::uuid;
        RETURN;
    END IF;
    IF t.rotated_at IS NOT NULL THEN
        IF t.rotated_at > now() - p_grace THEN
            SELECT * INTO child FROM app.refresh_tokens r
             WHERE r.parent_id = t.id AND r.token_hash = p_new_token_hash
               AND r.rotated_at IS NULL AND r.revoked_at IS NULL AND r.expires_at > now()
               FOR UPDATE;
            IF FOUND THEN
                RETURN QUERY SELECT 'replayed'::text, child.user_id, child.family_id;
                RETURN;
            END IF;
        END IF;
        UPDATE app.refresh_tokens r SET revoked_at = now()
         WHERE r.family_id = t.family_id AND r.revoked_at IS NULL;
        RETURN QUERY SELECT 'reused'::text, NULL::uuid, NULL::uuid;
        RETURN;
    END IF;
    IF t.expires_at <= now() THEN
        RETURN QUERY SELECT 'expired'::text, NULL::uuid, NULL::uuid;
        RETURN;
    END IF;
    UPDATE app.refresh_tokens r SET rotated_at = now() WHERE r.id = t.id;
    INSERT INTO app.refresh_tokens (user_id, token_hash, family_id, parent_id, expires_at)
    VALUES (t.user_id, p_new_token_hash, t.family_id, t.id, p_new_expires_at);
    RETURN QUERY SELECT 'rotated'::text, t.user_id, t.family_id;
END
$$;

REVOKE ALL ON FUNCTION app.rotate_refresh_token(bytea, bytea, timestamptz, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.rotate_refresh_token(bytea, bytea, timestamptz, interval) TO portcullis_app;
