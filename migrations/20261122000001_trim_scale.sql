-- Sums in the projection tables are stored without trailing zeros
-- (trim_scale), as the live writers and `tollgate replay` now both write
-- them, so a row reads the same however its sum was split into batches.
UPDATE account_balances
   SET committed = trim_scale(committed), held = trim_scale(held), overage = trim_scale(overage);
UPDATE usage_counters SET amount = trim_scale(amount);
