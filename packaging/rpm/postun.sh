# kvvm (rpm %postun): reload systemd's view of the units; on removal ($1 = 0) remove kvvm's own state and logs
# by name (never certificates: they live in the stores the settings named).
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -eq 0 ]; then
    for f in state.json status.json heartbeat.json worker.lock worker.pid poller.lock; do
        rm -f "/var/lib/kvvm/$f"
    done
    rm -rf /var/lib/kvvm/store-locks
    rm -f /var/lib/kvvm/.*.tmp.* 2>/dev/null || :
    rmdir /var/lib/kvvm 2>/dev/null || :
    rm -f /var/log/kvvm/*.log /var/log/kvvm/*.log.[0-9]* 2>/dev/null || :
    rmdir /var/log/kvvm 2>/dev/null || :
fi
