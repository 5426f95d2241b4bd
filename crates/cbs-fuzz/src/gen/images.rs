//! Valid image folders (`root/<class>/*.png|jpg`, or flat), encoded with the `image` crate in
//! the color types the folder reader converts (gray, gray + alpha, RGB, RGBA, 16-bit gray).

use std::io::Cursor;

use image::{DynamicImage, ImageFormat};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{random_bytes, Input};

/// One encoded image; JPEG only for the types its encoder takes.
fn image(rng: &mut ChaCha8Rng, jpeg: bool) -> Vec<u8> {
    let (w, h) = (rng.random_range(1..=24u32), rng.random_range(1..=24u32));
    let n = (w * h) as usize;
    let kind = if jpeg {
        rng.random_range(0..2)
    } else {
        rng.random_range(0..5)
    };
    let img = match kind {
        0 => DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(w, h, random_bytes(rng, n)).expect("size"),
        ),
        1 => DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(w, h, random_bytes(rng, 3 * n)).expect("size"),
        ),
        2 => DynamicImage::ImageLumaA8(
            image::GrayAlphaImage::from_raw(w, h, random_bytes(rng, 2 * n)).expect("size"),
        ),
        3 => DynamicImage::ImageRgba8(
            image::RgbaImage::from_raw(w, h, random_bytes(rng, 4 * n)).expect("size"),
        ),
        _ => {
            let v: Vec<u16> = (0..n).map(|_| rng.random()).collect();
            DynamicImage::ImageLuma16(image::ImageBuffer::from_raw(w, h, v).expect("size"))
        }
    };
    let mut out = Cursor::new(Vec::new());
    let format = if jpeg {
        ImageFormat::Jpeg
    } else {
        ImageFormat::Png
    };
    img.write_to(&mut out, format)
        .expect("encoding a small image");
    out.into_inner()
}

fn folder(rng: &mut ChaCha8Rng, jpeg_share: f64) -> Input {
    let flat = rng.random_bool(0.3);
    let classes = if flat { 1 } else { rng.random_range(1..=2) };
    let mut files = Vec::new();
    for c in 0..classes {
        for i in 0..rng.random_range(1..=2) {
            let jpeg = rng.random_bool(jpeg_share);
            let ext = if jpeg { "jpg" } else { "png" };
            let name = if flat {
                format!("{i}.{ext}")
            } else {
                format!("class{c}/{i}.{ext}")
            };
            files.push((name, image(rng, jpeg)));
        }
    }
    Input {
        files,
        folder: true,
    }
}

/// A folder of PNG images.
pub fn png_folder(rng: &mut ChaCha8Rng, _scratch: &std::path::Path) -> Input {
    folder(rng, 0.0)
}

/// A folder of JPEG images (a PNG among them now and then).
pub fn jpeg_folder(rng: &mut ChaCha8Rng, _scratch: &std::path::Path) -> Input {
    folder(rng, 0.9)
}
