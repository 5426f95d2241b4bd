//! Image folders and ADM's centre crop.
//!
//! The golden values below were produced by guided-diffusion's `center_crop_arr` (PIL) with
//! Pillow 12.0.0 and 9.5.0 (identical); the loader was also checked bit-exact against it on 180
//! PNG crops of random sizes, RGB and L (Pillow 13 changed its pass order and differs by ±2).

use std::path::{Path, PathBuf};

use cbs_data::{
    center_crop_arr, load_image_folder, load_image_index, resize, scan_image_folder, DataError,
    Filter, FolderOptions,
};
use image::{GrayImage, RgbImage, RgbaImage};

use super::write;

fn rgb(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
}

fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    rgb(w, h, f).save(path).unwrap();
}

fn mkdir(p: &Path) -> PathBuf {
    std::fs::create_dir_all(p).unwrap();
    p.to_path_buf()
}

/// `(Σ v, Σ (i + 1) v mod 2^32)` over the HWC bytes, as computed on the PIL side.
fn digest(v: &[u8]) -> (u64, u64) {
    let sum = v.iter().map(|&x| u64::from(x)).sum();
    let weighted = v.iter().enumerate().fold(0u64, |acc, (i, &x)| {
        (acc + (i as u64 + 1) * u64::from(x)) % (1 << 32)
    });
    (sum, weighted)
}

fn px(crop: &[u8], size: usize, c: usize, y: usize, x: usize) -> Vec<u8> {
    crop[(y * size + x) * c..(y * size + x + 1) * c].to_vec()
}

#[test]
fn adm_crop_64x48_to_32_matches_pil_and_a_closed_form() {
    // R = 4x varies along x only, G = 5y along y only, B mixes both.
    let img = rgb(64, 48, |x, y| {
        [(4 * x) as u8, (5 * y) as u8, ((x * y) % 256) as u8]
    });
    let crop = center_crop_arr(img.as_raw(), 64, 48, 3, 32).unwrap();
    // 48 < 2·32: no BOX step; ×2/3 → 43×32 (round(42.67)), crop columns 5..37.
    assert_eq!(crop.len(), 32 * 32 * 3);
    assert_eq!(digest(&crop), (370124, 642132783));
    assert_eq!(px(&crop, 32, 3, 0, 16), [126, 1, 9]);
    assert_eq!(px(&crop, 32, 3, 10, 16), [126, 76, 189]);
    assert_eq!(px(&crop, 32, 3, 10, 0), [31, 76, 117]);
    assert_eq!(px(&crop, 32, 3, 31, 31), [215, 234, 201]);

    // Independently: a cubic kernel reproduces a linear ramp away from the borders, so the
    // output is the ramp at the sample centre. Column 16 of the crop is column 21 of the 43-wide
    // image, centred at (21 + 0.5)·64/43 = 32 source pixels: R = 4·(32 − 0.5) = 126. Row 10
    // (rows are not cropped) is centred at 10.5·1.5 = 15.75: G = 5·(15.75 − 0.5) = 76.25 → 76.
    let center_x = (21.0 + 0.5) * 64.0 / 43.0;
    assert_eq!(f64::from(crop[(10 * 32 + 16) * 3]), 4.0 * (center_x - 0.5));
    let center_y: f64 = (10.0 + 0.5) * 48.0 / 32.0;
    assert_eq!(
        f64::from(crop[(10 * 32 + 16) * 3 + 1]),
        (5.0 * (center_y - 0.5)).round()
    );
}

#[test]
fn adm_crop_with_box_downsampling_and_grayscale_matches_pil() {
    // 100 ≥ 2·32: BOX to 65×50, then bicubic to 42×32 (round(41.6)), crop columns 5..37.
    let img = rgb(130, 100, |x, y| {
        [x as u8, (2 * y) as u8, ((3 * x + 7 * y) % 256) as u8]
    });
    let crop = center_crop_arr(img.as_raw(), 130, 100, 3, 32).unwrap();
    assert_eq!(digest(&crop), (300494, 516241283));
    assert_eq!(px(&crop, 32, 3, 0, 0), [17, 2, 58]);
    assert_eq!(px(&crop, 32, 3, 16, 16), [67, 102, 45]);
    assert_eq!(px(&crop, 32, 3, 31, 31), [113, 196, 138]);

    // One channel: 40×50 → 32×40 (×0.8), crop rows 4..36.
    let gray = GrayImage::from_fn(40, 50, |x, y| image::Luma([((6 * x + 5 * y) % 256) as u8]));
    let crop = center_crop_arr(gray.as_raw(), 40, 50, 1, 32).unwrap();
    assert_eq!(digest(&crop), (131620, 66131683));
    assert_eq!(
        (crop[0], crop[16 * 32 + 16], crop[32 * 32 - 1]),
        (27, 245, 196)
    );
}

#[test]
fn resize_keeps_constants_and_rejects_bad_buffers() {
    // Fixed-point weights still map a flat image to itself, up or down.
    let flat = vec![77u8; 9 * 7 * 3];
    for (w, h) in [(4, 3), (20, 15), (9, 2)] {
        for f in [Filter::Box, Filter::Bicubic] {
            let out = resize(&flat, 9, 7, 3, w, h, f).unwrap();
            assert_eq!(out, vec![77; w * h * 3], "{w}x{h} {f:?}");
        }
    }
    assert!(matches!(
        resize(&flat, 9, 7, 2, 4, 4, Filter::Box),
        Err(DataError::Invalid { .. })
    ));
    assert!(resize(&flat, 9, 7, 3, 0, 4, Filter::Box).is_err());
    assert!(center_crop_arr(&flat, 9, 7, 3, 0).is_err());
    assert!(center_crop_arr(&[], 0, 0, 3, 8).is_err());
    // Tiny and extreme aspect ratios do not panic.
    let thin = vec![9u8; 200 * 3];
    assert_eq!(center_crop_arr(&thin, 200, 1, 3, 4).unwrap().len(), 48);
    assert_eq!(
        center_crop_arr(&[5, 6, 7], 1, 1, 3, 3).unwrap(),
        [5, 6, 7].repeat(9)
    );
}

/// root/{cat,dog,zebra}: PNG RGB 40×50, grayscale PNG, RGBA PNG, a JPEG, a nested image; plus
/// ignored entries.
fn class_tree(root: &Path) {
    let cat = mkdir(&root.join("cat"));
    let dog = mkdir(&root.join("dog"));
    let zebra = mkdir(&root.join("zebra"));
    save_rgb(&cat.join("b.png"), 40, 50, |x, y| {
        [x as u8 * 5, y as u8 * 4, 100]
    });
    GrayImage::from_fn(33, 20, |x, y| image::Luma([(x * 7 + y) as u8]))
        .save(cat.join("a.PNG"))
        .unwrap();
    RgbaImage::from_pixel(17, 17, image::Rgba([10, 20, 30, 0]))
        .save(dog.join("x.png"))
        .unwrap();
    save_rgb(&dog.join("y.jpg"), 64, 64, |_, _| [200, 100, 50]);
    let deep = mkdir(&zebra.join("sub").join("deeper"));
    save_rgb(&deep.join("z.jpeg"), 20, 30, |_, _| [0, 255, 0]);
    // Ignored: other extensions, hidden files and folders.
    write(&cat, "notes.txt", b"hello");
    let hidden = mkdir(&root.join(".ipynb_checkpoints"));
    save_rgb(&hidden.join("h.png"), 8, 8, |_, _| [1, 2, 3]);
    write(&dog, ".hidden.png", b"not an image");
}

#[test]
fn class_folders_become_sorted_labels() {
    let dir = tempfile::tempdir().unwrap();
    class_tree(dir.path());
    let index = scan_image_folder(dir.path()).unwrap();
    assert_eq!(index.classes, ["cat", "dog", "zebra"]);
    let names: Vec<String> = index
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a.PNG", "b.png", "x.png", "y.jpg", "z.jpeg"]);
    assert_eq!(index.labels, [0, 0, 1, 1, 2]);

    let ds = load_image_folder(dir.path(), &FolderOptions::new(16)).unwrap();
    assert_eq!((ds.len(), ds.channels, ds.height, ds.width), (5, 3, 16, 16));
    assert_eq!(
        (ds.num_classes, ds.labels.clone()),
        (3, vec![0, 0, 1, 1, 2])
    );
    let plane = 256;
    let image = |i: usize| &ds.images[i * 3 * plane..(i + 1) * 3 * plane];
    // Grayscale is repeated into R = G = B.
    let a = image(0);
    assert_eq!(a[..plane], a[plane..2 * plane]);
    assert_eq!(a[..plane], a[2 * plane..]);
    // RGBA: alpha dropped (not composited), a flat colour stays exact.
    let x = image(2);
    assert!(x[..plane].iter().all(|&v| v == 10));
    assert!(x[plane..2 * plane].iter().all(|&v| v == 20));
    assert!(x[2 * plane..].iter().all(|&v| v == 30));
    // The 40×50 PNG, stored CHW: the crop of its HWC pixels, per plane.
    let b = rgb(40, 50, |x, y| [x as u8 * 5, y as u8 * 4, 100]);
    let crop = center_crop_arr(b.as_raw(), 40, 50, 3, 16).unwrap();
    for c in 0..3 {
        let expected: Vec<u8> = crop.iter().skip(c).step_by(3).copied().collect();
        assert_eq!(
            image(1)[c * plane..(c + 1) * plane],
            expected[..],
            "plane {c}"
        );
    }
    // JPEG is lossy: a flat colour comes back within a few levels.
    let y = image(3);
    for (c, want) in [200i32, 100, 50].into_iter().enumerate() {
        let got = &y[c * plane..(c + 1) * plane];
        assert!(
            got.iter().all(|&v| (i32::from(v) - want).abs() <= 3),
            "{got:?}"
        );
    }
}

#[test]
fn grayscale_mode_uses_pil_luma_and_threads_do_not_change_the_result() {
    let dir = tempfile::tempdir().unwrap();
    class_tree(dir.path());
    let mut opts = FolderOptions::new(8);
    opts.channels = 1;
    opts.threads = 1;
    let ds = load_image_folder(dir.path(), &opts).unwrap();
    assert_eq!((ds.channels, ds.image_len()), (1, 64));
    // PIL's L = R·299/1000 + G·587/1000 + B·114/1000: (10, 20, 30) → 18.
    let luma = |r: f64, g: f64, b: f64| (0.299 * r + 0.587 * g + 0.114 * b).round() as u8;
    assert!(ds.images[2 * 64..3 * 64]
        .iter()
        .all(|&v| v == luma(10.0, 20.0, 30.0)));
    // (A JPEG: green comes back within a few levels.)
    let green = i32::from(luma(0.0, 255.0, 0.0));
    assert!(ds.images[4 * 64..]
        .iter()
        .all(|&v| (i32::from(v) - green).abs() <= 3));
    // The grayscale PNG keeps its own values: the crop of the L image.
    let gray = GrayImage::from_fn(33, 20, |x, y| image::Luma([(x * 7 + y) as u8]));
    let crop = center_crop_arr(gray.as_raw(), 33, 20, 1, 8).unwrap();
    assert_eq!(ds.images[..64], crop[..]);

    for threads in [2, 3, 16] {
        opts.threads = threads;
        let again = load_image_folder(dir.path(), &opts).unwrap();
        assert_eq!(again.images, ds.images, "{threads} threads");
        assert_eq!(again.labels, ds.labels);
    }
}

#[test]
fn flat_folder_is_one_class_and_subsets_match_loading_everything() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..20u8 {
        save_rgb(&dir.path().join(format!("{i:02}.png")), 12, 10, |x, y| {
            [i * 10, x as u8, y as u8]
        });
    }
    let index = scan_image_folder(dir.path()).unwrap();
    assert_eq!((index.classes.len(), index.files.len()), (1, 20));
    let opts = FolderOptions::new(8);
    let all = load_image_folder(dir.path(), &opts).unwrap();
    assert_eq!((all.num_classes, all.labels.clone()), (1, vec![0; 20]));
    let first_red = all.images[0];
    assert_eq!(first_red, 0);

    // Subsampling the file list then decoding = decoding all then subsampling.
    let sub = load_image_index(&index.subset(0.3, 11).unwrap(), &opts).unwrap();
    let want = all.subset(0.3, 11).unwrap();
    assert_eq!(sub.len(), 6);
    assert_eq!((sub.images, sub.labels), (want.images, want.labels));
    assert_eq!(index.subset(1.0, 3).unwrap(), index);
    assert!(index.subset(0.0, 3).is_err());
}

#[test]
fn folder_errors_name_the_file_or_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    let absent = root.join("absent");
    let err = load_image_folder(&absent, &FolderOptions::new(8)).unwrap_err();
    assert!(matches!(err, DataError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("absent"), "{err}");

    let empty = mkdir(&root.join("empty"));
    write(&empty, "readme.txt", b"no images here");
    let msg = scan_image_folder(&empty).unwrap_err().to_string();
    assert!(msg.contains("no images") && msg.contains("empty"), "{msg}");

    let classes = mkdir(&root.join("classes"));
    save_rgb(&mkdir(&classes.join("a")).join("1.png"), 4, 4, |_, _| {
        [0; 3]
    });
    let b = mkdir(&classes.join("b"));
    let msg = scan_image_folder(&classes).unwrap_err().to_string();
    assert!(msg.contains("holds no images"), "{msg}");
    assert!(msg.contains(&b.display().to_string()), "{msg}");

    save_rgb(&b.join("2.png"), 4, 4, |_, _| [0; 3]);
    save_rgb(&classes.join("stray.png"), 4, 4, |_, _| [0; 3]);
    let msg = scan_image_folder(&classes).unwrap_err().to_string();
    assert!(msg.contains("stray.png") && msg.contains("both"), "{msg}");
    std::fs::remove_file(classes.join("stray.png")).unwrap();

    // Corrupt files: garbage, a truncated PNG, a JPEG cut short. The first bad file in sorted
    // order is reported, whatever the thread count.
    let png = {
        let mut v = Vec::new();
        rgb(30, 30, |x, y| [x as u8, y as u8, 7])
            .write_to(&mut std::io::Cursor::new(&mut v), image::ImageFormat::Png)
            .unwrap();
        v
    };
    let bad1 = write(&b, "3.png", b"definitely not a png");
    let bad2 = write(&b, "4.png", &png[..png.len() / 2]);
    for threads in [1, 2, 8] {
        let opts = FolderOptions {
            image_size: 8,
            channels: 3,
            threads,
        };
        let err = load_image_folder(&classes, &opts).unwrap_err();
        assert!(matches!(err, DataError::Malformed { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&bad1.display().to_string()), "{msg}");
    }
    std::fs::remove_file(&bad1).unwrap();
    let msg = load_image_folder(&classes, &FolderOptions::new(8))
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&bad2.display().to_string()), "{msg}");
    std::fs::remove_file(&bad2).unwrap();
    let jpg = b.join("5.jpg");
    save_rgb(&jpg, 40, 40, |x, y| [x as u8, y as u8, 3]);
    let bytes = std::fs::read(&jpg).unwrap();
    std::fs::write(&jpg, &bytes[..bytes.len() / 3]).unwrap();
    // A cut JPEG may decode with grey filler or fail; either way, no panic, and a failure names it.
    if let Err(e) = load_image_folder(&classes, &FolderOptions::new(8)) {
        assert!(e.to_string().contains("5.jpg"), "{e}");
    }

    // Bad options.
    std::fs::remove_file(&jpg).unwrap();
    let mut opts = FolderOptions::new(8);
    opts.channels = 2;
    assert!(matches!(
        load_image_folder(&classes, &opts),
        Err(DataError::Invalid {
            field: "channels",
            ..
        })
    ));
    assert!(matches!(
        load_image_folder(&classes, &FolderOptions::new(0)),
        Err(DataError::Invalid {
            field: "image_size",
            ..
        })
    ));
    assert_eq!(
        load_image_folder(&classes, &FolderOptions::new(8))
            .unwrap()
            .labels,
        [0, 1]
    );
}
