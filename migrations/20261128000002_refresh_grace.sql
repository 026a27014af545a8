-- Refresh-token rotation with a grace window.
--
-- Two requests that refresh with the same token at nearly the same moment (two browser tabs,
-- a retry after a timeout) are not an attack. A rotated token presented again within
-- p_grace of its rotation is refused ('raced') without revoking its family; after the window
-- it is treated as stolen and the whole family is revoked ('reused').

DROP FUNCTION app.rotate_refresh_token(bytea, bytea, timestamptz);

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
            RETURN QUERY SELECT 'raced'::text, NULL::uuid, NULL::uuid;
            RETURN;
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
