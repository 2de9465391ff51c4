//! Exact money. USD amounts are `rust_decimal::Decimal`, sent as JSON strings
//! and stored as `NUMERIC`.
//!
//! **The rounding rule** (the only place it is written): USD amounts are kept
//! to [`USD_SCALE`] decimal places. An amount charged to an account (a hold,
//! a committed or recorded usage) rounds *up*; an amount given back (a refund,
//! a remaining budget offered to a caller) rounds *down*. So rounding can only
//! ever make Tollgate more conservative, never let spend past a cap.

use rust_decimal::{Decimal, RoundingStrategy};

/// Decimal places kept for USD (a ten-billionth of a dollar).
pub const USD_SCALE: u32 = 10;

/// Which way an amount is rounded: charges up, refunds down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// A hold, a commit, recorded usage: never under-charge.
    Charge,
    /// Money given back or offered: never over-refund.
    Refund,
}

/// Rounds a USD amount to [`USD_SCALE`] places following the rule above.
pub fn round_usd(amount: Decimal, rounding: Rounding) -> Decimal {
    let strategy = match rounding {
        Rounding::Charge => RoundingStrategy::AwayFromZero,
        Rounding::Refund => RoundingStrategy::ToZero,
    };
    amount
        .round_dp_with_strategy(USD_SCALE, strategy)
        .normalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn charges_round_up_and_refunds_round_down() {
        let x = dec!(0.00000000001);
        assert_eq!(round_usd(x, Rounding::Charge), dec!(0.0000000001));
        assert_eq!(round_usd(x, Rounding::Refund), dec!(0));
        assert_eq!(round_usd(dec!(2.50), Rounding::Charge), dec!(2.5));
    }
}
