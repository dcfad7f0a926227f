
WITH new_rows AS (
    INSERT INTO spend_events (
        started_at, request_id, tenant_id, key_id, model, deployment_id, provider_id,
        endpoint, stream, outcome, status, attempts, prompt_tokens, completion_tokens,
        cached_read_tokens, cache_creation_tokens, usage_reported, cost_usd, price_revision,
        latency_ms, ttft_ms, price_version, cached_response, saved_usd)
    SELECT * FROM UNNEST(
        $1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::boolean[], $10::text[], $11::smallint[], $12::smallint[],
        $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::boolean[],
        $18::double precision[], $19::bigint[], $20::integer[], $21::integer[], $22::bigint[],
        $23::boolean[], $24::double precision[])
    ON CONFLICT DO NOTHING
    RETURNING started_at, tenant_id, key_id, model, deployment_id, outcome, prompt_tokens,
        completion_tokens, cached_read_tokens, cache_creation_tokens, cost_usd,
        cached_response, saved_usd
),
rollup AS (
INSERT INTO spend_daily AS d (
    day, tenant_id, key_id, model, deployment_id, requests, errors, prompt_tokens,
    completion_tokens, cached_read_tokens, cache_creation_tokens, cost_usd, cached_responses,
    saved_usd)
SELECT (started_at AT TIME ZONE 'UTC')::date, tenant_id, key_id, model,
    coalesce(deployment_id, ''), count(*), count(*) FILTER (WHERE outcome <> 'success'),
    -- Token sums saturate at bigint's maximum rather than fail the batch (issue 13).
    least(sum(prompt_tokens), 9223372036854775807)::bigint,
    least(sum(completion_tokens), 9223372036854775807)::bigint,
    least(sum(cached_read_tokens), 9223372036854775807)::bigint,
    least(sum(cache_creation_tokens), 9223372036854775807)::bigint, sum(cost_usd),
    count(*) FILTER (WHERE cached_response), sum(saved_usd)
FROM new_rows
GROUP BY 1, 2, 3, 4, 5
ON CONFLICT (day, tenant_id, key_id, model, deployment_id) DO UPDATE SET
    requests = d.requests + EXCLUDED.requests,
    errors = d.errors + EXCLUDED.errors,
    prompt_tokens = least(d.prompt_tokens::numeric + EXCLUDED.prompt_tokens, 9223372036854775807)::bigint,
    completion_tokens = least(d.completion_tokens::numeric + EXCLUDED.completion_tokens, 9223372036854775807)::bigint,
    cached_read_tokens = least(d.cached_read_tokens::numeric + EXCLUDED.cached_read_tokens, 9223372036854775807)::bigint,
    cache_creation_tokens = least(d.cache_creation_tokens::numeric + EXCLUDED.cache_creation_tokens, 9223372036854775807)::bigint,
    cost_usd = d.cost_usd + EXCLUDED.cost_usd,
    cached_responses = d.cached_responses + EXCLUDED.cached_responses,
    saved_usd = d.saved_usd + EXCLUDED.saved_usd
RETURNING 1
)
SELECT count(*) AS "count!" FROM new_rows
