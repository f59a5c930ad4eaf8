//! Chart support shared by every plot: the font that SVG and PNG text is measured and drawn with.
//!
//! plotters' `ab_glyph` text backend needs fonts registered by name before drawing; DejaVu Sans
//! ships in `assets/fonts/` so that charts never depend on the machine's installed fonts.

use std::sync::Once;

/// DejaVu Sans (Bitstream Vera licence, see `assets/fonts/DejaVuSans.LICENSE`).
const DEJAVU_SANS: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// Registers the bundled font as `sans-serif` (idempotent).
pub fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [
            plotters::style::FontStyle::Normal,
            plotters::style::FontStyle::Bold,
        ] {
            // The bundled bytes are a valid TrueType font; a failure here would be a build defect.
            if plotters::style::register_font("sans-serif", style, DEJAVU_SANS).is_err() {
                tracing::warn!("could not register the bundled chart font");
            }
        }
    });
}
