# Shared by the benchmark scripts: build release binaries and start the reference shop.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cargo build --release --quiet -p patrol -p citadel-shop --manifest-path "$ROOT/Cargo.toml"
PATROL="$ROOT/target/release/patrol"
SHOP_BIN="$ROOT/target/release/citadel-shop"
WORK="$(mktemp -d)"
SHOP_PORT="${SHOP_PORT:-18080}"
SHOP="http://127.0.0.1:$SHOP_PORT"
"$SHOP_BIN" --listen "127.0.0.1:$SHOP_PORT" > "$WORK/shop.log" 2>&1 &
SHOP_PID=$!
trap 'kill $SHOP_PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do curl -fs "$SHOP/api/health" > /dev/null && break; sleep 0.1; done
