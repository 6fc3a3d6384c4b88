//! The shard map: which symbols exist, how they trade, and which shard owns each.
//!
//! Read once at start from TOML (`shards/default.toml` unless configured). Decimals are
//! written as strings (`tick_size = "0.1"`) so no value ever passes through a float. Any
//! mistake stops the start with an error naming the file, the line and the field.

use std::path::Path;

use rust_decimal::Decimal;
use serde::Deserialize;
use toml::Spanned;

use crate::engine::SymbolSpec;

#[derive(Clone, Debug)]
pub struct ShardMap {
    pub symbols: Vec<SymbolSpec>,
}

/// A shard map that cannot be used, located in its file.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct ShardMapError {
    pub file: String,
    pub line: usize,
    pub field: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(rename = "symbol")]
    symbols: Vec<Spanned<Entry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: Spanned<String>,
    tick_size: Spanned<String>,
    lot_size: Spanned<String>,
    max_leverage: Option<Spanned<u32>>,
    maker_fee: Option<Spanned<String>>,
    taker_fee: Option<Spanned<String>>,
    protection_band: Option<Spanned<String>>,
    max_position: Option<Spanned<String>>,
    max_position_notional: Option<Spanned<String>>,
    maintenance_margin_rate: Option<Spanned<String>>,
    funding_interval_secs: Option<Spanned<u64>>,
    price_band_down: Option<Spanned<String>>,
    price_band_up: Option<Spanned<String>>,
    mark_band: Option<Spanned<String>>,
    mark_basis_window_secs: Option<Spanned<u64>>,
    self_trade_prevention: Option<Spanned<String>>,
    shard: Spanned<usize>,
}

impl ShardMap {
    /// Reads and validates a shard map file.
    ///
    /// # Errors
    /// [`ShardMapError`] naming the file, line and field at fault.
    pub fn load(path: &Path) -> Result<Self, ShardMapError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ShardMapError {
            file: file.clone(),
            line: 0,
            field: "-".into(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    /// Parses shard map text; `file` names it in errors.
    ///
    /// # Errors
    /// [`ShardMapError`] naming the file, line and field at fault.
    pub fn parse(text: &str, file: &str) -> Result<Self, ShardMapError> {
        let fail = |span: std::ops::Range<usize>, field: &str, message: String| ShardMapError {
            file: file.to_owned(),
            line: text[..span.start.min(text.len())].matches('\n').count() + 1,
            field: field.to_owned(),
            message,
        };
        let parsed: File = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let field = field_of(text, e.message(), span.start);
            fail(span, &field, e.message().trim().to_owned())
        })?;
        if parsed.symbols.is_empty() {
            return Err(fail(0..0, "symbol", "at least one [[symbol]] is required".into()));
        }
        let mut symbols: Vec<SymbolSpec> = Vec::new();
        for entry in parsed.symbols {
            let entry_span = entry.span();
            let e = entry.into_inner();
            let decimal = |v: &Option<Spanned<String>>, field: &str, default: &str| {
                let (text, span) = v.as_ref().map_or((default, entry_span.clone()), |s| (s.get_ref(), s.span()));
                text.parse::<Decimal>()
                    .map_err(|err| fail(span, field, format!("{text:?} is not a decimal: {err}")))
            };
            let tick = decimal(&Some(e.tick_size.clone()), "tick_size", "")?;
            let lot = decimal(&Some(e.lot_size.clone()), "lot_size", "")?;
            let maker = decimal(&e.maker_fee, "maker_fee", "0.0002")?;
            let taker = decimal(&e.taker_fee, "taker_fee", "0.0005")?;
            let band = decimal(&e.protection_band, "protection_band", "0.05")?;
            let leverage = e.max_leverage.as_ref().map_or(100, |v| *v.get_ref());
            let optional = |v: &Option<Spanned<String>>, field: &str| v.as_ref().map(|_| decimal(v, field, "")).transpose();
            let max_position = optional(&e.max_position, "max_position")?;
            let max_position_notional = optional(&e.max_position_notional, "max_position_notional")?;
            let maintenance = optional(&e.maintenance_margin_rate, "maintenance_margin_rate")?;
            let funding = e.funding_interval_secs.as_ref().map(|v| *v.get_ref());
            let band_down = optional(&e.price_band_down, "price_band_down")?;
            let band_up = optional(&e.price_band_up, "price_band_up")?;
            let mark_band = optional(&e.mark_band, "mark_band")?;
            let basis_window = e.mark_basis_window_secs.as_ref().map(|v| *v.get_ref());
            let spec = SymbolSpec::new(e.name.get_ref(), tick, lot, leverage, maker, taker, band, *e.shard.get_ref())
                .and_then(|spec| spec.with_position_limits(max_position, max_position_notional))
                .and_then(|spec| spec.with_perpetual(maintenance, funding))
                .and_then(|spec| spec.with_price_protection(band_down, band_up, mark_band, basis_window))
                .map_err(|err| {
                    use crate::engine::symbol::SpecError as E;
                    let (field, span) = match &err {
                        E::BadName => ("name", e.name.span()),
                        E::TickLotProduct => ("tick_size", e.tick_size.span()),
                        E::NotPositive { field } | E::TooPrecise { field } | E::OutOfRange { field, .. } => {
                            let span = match *field {
                                "tick_size" => Some(e.tick_size.span()),
                                "lot_size" => Some(e.lot_size.span()),
                                "max_leverage" => e.max_leverage.as_ref().map(Spanned::span),
                                "maker_fee" => e.maker_fee.as_ref().map(Spanned::span),
                                "taker_fee" => e.taker_fee.as_ref().map(Spanned::span),
                                "max_position" => e.max_position.as_ref().map(Spanned::span),
                                "max_position_notional" => e.max_position_notional.as_ref().map(Spanned::span),
                                "maintenance_margin_rate" => e.maintenance_margin_rate.as_ref().map(Spanned::span),
                                "funding_interval_secs" => e.funding_interval_secs.as_ref().map(Spanned::span),
                                "price_band_down" => e.price_band_down.as_ref().map(Spanned::span),
                                "price_band_up" => e.price_band_up.as_ref().map(Spanned::span),
                                "mark_band" => e.mark_band.as_ref().map(Spanned::span),
                                "mark_basis_window_secs" => e.mark_basis_window_secs.as_ref().map(Spanned::span),
                                _ => e.protection_band.as_ref().map(Spanned::span),
                            };
                            (*field, span.unwrap_or(entry_span.clone()))
                        }
                    };
                    fail(span, field, err.to_string())
                })?;
            let mut spec = spec;
            if let Some(mode) = &e.self_trade_prevention {
                spec.self_trade_prevention = crate::engine::SelfTradePrevention::parse(mode.get_ref()).ok_or_else(|| {
                    fail(mode.span(), "self_trade_prevention", format!("{:?} is not EXPIRE_TAKER, EXPIRE_MAKER or EXPIRE_BOTH", mode.get_ref()))
                })?;
            }
            if symbols.iter().any(|s| s.name == spec.name || s.key == spec.key) {
                return Err(fail(e.name.span(), "name", format!("{} is listed twice", spec.name)));
            }
            symbols.push(spec);
        }
        Ok(Self { symbols })
    }

    pub fn get(&self, name: &str) -> Option<&SymbolSpec> {
        self.symbols.iter().find(|s| s.name == name)
    }
}

/// The field a TOML error is about: named in the message (missing or unknown fields), or
/// the key on the line where the error points.
fn field_of(text: &str, message: &str, at: usize) -> String {
    if message.contains("field `") {
        return message.split('`').nth(1).unwrap_or("-").to_owned();
    }
    let start = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    line.split_once('=').map_or("-", |(key, _)| key.trim()).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[symbol]]
name = "BTC-PERP"
tick_size = "0.1"
lot_size = "0.001"
shard = 0

[[symbol]]
name = "ETH-PERP"
tick_size = "0.01"
lot_size = "0.01"
max_leverage = 50
shard = 1
"#;

    #[test]
    fn parses_with_defaults() {
        let map = ShardMap::parse(GOOD, "m.toml").unwrap();
        let btc = map.get("BTC-PERP").unwrap();
        assert_eq!(btc.max_leverage, 100);
        assert_eq!(btc.taker_fee, "0.0005".parse().unwrap());
        assert_eq!(map.get("ETH-PERP").unwrap().shard, 1);
        assert_eq!(btc.self_trade_prevention, crate::engine::SelfTradePrevention::ExpireTaker);
        let maker = ShardMap::parse(&GOOD.replace("max_leverage = 50", "max_leverage = 50\nself_trade_prevention = \"EXPIRE_MAKER\""), "m.toml").unwrap();
        assert_eq!(maker.get("ETH-PERP").unwrap().self_trade_prevention, crate::engine::SelfTradePrevention::ExpireMaker);
        let e = error_of(&GOOD.replace("max_leverage = 50", "max_leverage = 50\nself_trade_prevention = \"NONE\""));
        assert_eq!((e.line, e.field.as_str()), (13, "self_trade_prevention"), "{e}");
    }

    #[test]
    fn the_default_map_in_the_repository_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("shards/default.toml");
        let map = ShardMap::load(&path).unwrap();
        let btc = map.get("BTC-PERP").unwrap();
        assert_eq!((btc.tick_size, btc.lot_size), ("0.1".parse().unwrap(), "0.001".parse().unwrap()));
        let eth = map.get("ETH-PERP").unwrap();
        assert_eq!((eth.tick_size, eth.lot_size), ("0.01".parse().unwrap(), "0.01".parse().unwrap()));
    }

    fn error_of(text: &str) -> ShardMapError {
        ShardMap::parse(text, "bad.toml").unwrap_err()
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = error_of(&GOOD.replace("lot_size = \"0.01\"", "lot_size = \"0.0x\""));
        assert_eq!((e.file.as_str(), e.line, e.field.as_str()), ("bad.toml", 11, "lot_size"));
        assert!(e.to_string().starts_with("bad.toml:11: lot_size:"), "{e}");

        let e = error_of(&GOOD.replace("tick_size = \"0.1\"", "tick_size = 0.1"));
        assert_eq!((e.line, e.field.as_str()), (4, "tick_size"), "{e}");
        assert!(e.message.contains("string"), "{e}");

        let e = error_of(&GOOD.replace("max_leverage = 50", "max_leverage = 0"));
        assert_eq!((e.line, e.field.as_str()), (12, "max_leverage"));

        let e = error_of(&GOOD.replace("shard = 1", ""));
        assert_eq!(e.field, "shard", "{e}");

        let e = error_of(&GOOD.replace("ETH-PERP", "BTC-PERP"));
        assert_eq!((e.line, e.field.as_str()), (9, "name"));

        let e = error_of(&GOOD.replace("shard = 0", "shard = 0\ncolour = \"red\""));
        assert_eq!((e.line, e.field.as_str()), (7, "colour"), "{e}");

        // ETH-PERP allows 50x: its maintenance margin must stay under 1/50.
        let e = error_of(&GOOD.replace("max_leverage = 50", "max_leverage = 50\nmaintenance_margin_rate = \"0.02\""));
        assert_eq!((e.line, e.field.as_str()), (13, "maintenance_margin_rate"), "{e}");
        let e = error_of(&GOOD.replace("shard = 1", "shard = 1\nfunding_interval_secs = 0"));
        assert_eq!(e.field, "funding_interval_secs", "{e}");
        let map = ShardMap::parse(&GOOD.replace("max_leverage = 50", "max_leverage = 50\nmaintenance_margin_rate = \"0.0199\""), "ok.toml").unwrap();
        assert_eq!((map.symbols[1].maintenance_margin_rate.to_string().as_str(), map.symbols[1].funding_interval_secs), ("0.0199", 28_800));
        assert_eq!(map.symbols[0].maintenance_margin_rate.to_string(), "0.005");
    }
}
