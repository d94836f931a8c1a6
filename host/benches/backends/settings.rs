//! What to run, from `KEY=VALUE` arguments or `SNAPSTORE_BENCH_<KEY>`.

pub struct Settings {
    pub backends: Vec<String>,
    pub iters: usize,
    pub big: usize,
    pub zfs_iters: usize,
    pub scale: usize,
    pub scale_iters: usize,
    pub scale_backends: Vec<String>,
}

impl Settings {
    pub fn load() -> Settings {
        // `cargo bench` passes `--bench`; our settings are KEY=VALUE.
        let args: Vec<(String, String)> = std::env::args()
            .skip(1)
            .filter_map(|a| a.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect();
        let get = |key: &str, default: &str| -> String {
            args.iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(format!("SNAPSTORE_BENCH_{}", key.to_uppercase())).ok())
                .unwrap_or_else(|| default.to_string())
        };
        let number = |key: &str, default: &str| -> usize {
            get(key, default).parse().unwrap_or_else(|_| panic!("setting {key} must be a number"))
        };
        let list = |key: &str, default: &str| -> Vec<String> {
            get(key, default)
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        Settings {
            backends: list("backends", "rsync,rsync-native,btrfs,xfs-reflink,zfs"),
            iters: number("iters", "11"),
            big: number("big", "5"),
            zfs_iters: number("zfs_iters", "3"),
            scale: number("scale", "10000"),
            scale_iters: number("scale_iters", "5"),
            scale_backends: list("scale_backends", "rsync,btrfs"),
        }
    }
}
