"""A user-space Ethernet bridge that delays every frame: WAN latency without netem.

This kernel has no ``netem`` qdisc, so latency is added here. Run inside the hub namespace,
it reads frames from each port (AF_PACKET) and sends each one out of the port that owns its
destination MAC (learnt from source addresses; unknown and broadcast frames go to every other
port) once ``delay_ms`` has passed. A frame crosses the bridge once per direction, so a round
trip between two parties gains ``2 * delay_ms``. Rate limits stay in the kernel (``tc tbf``).

    python bench/delay_bridge.py --delay-ms 5 p0 p1 p2
"""

from __future__ import annotations

import argparse
import heapq
import select
import signal
import socket
import threading
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET, PACKET_VNET_HDR = 263, 15
VNET_HEADER = 10  # struct virtio_net_hdr: carries checksum-offload and GSO state with each frame
MAX_FRAME = 1 << 17


class DelayBridge:
    def __init__(self, ports: list[str], delay_s: float) -> None:
        self.delay_s = delay_s
        self.sockets: dict[str, socket.socket] = {}
        for port in ports:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 24)
            # veth leaves TCP checksums to "hardware"; the virtio header hands that duty (and any
            # GSO super-frame) back to the kernel when the frame is sent on, instead of corrupting it
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.bind((port, 0))
            self.sockets[port] = sock
        self.by_fd = {sock.fileno(): port for port, sock in self.sockets.items()}
        self.owner: dict[bytes, str] = {}  # MAC -> port
        self.queue: list[tuple[float, int, str, bytes]] = []
        self.sequence = 0
        self.ready = threading.Condition()
        self.running = True

    def receive_forever(self) -> None:
        poller = select.poll()
        for sock in self.sockets.values():
            poller.register(sock, select.POLLIN)
        while self.running:
            for fd, _ in poller.poll(200):
                port = self.by_fd[fd]
                frame, address = self.sockets[port].recvfrom(MAX_FRAME)
                if address[2] == PACKET_OUTGOING or len(frame) < VNET_HEADER + 14:
                    continue  # our own transmissions, seen again
                mac = frame[VNET_HEADER:VNET_HEADER + 12]
                self.owner[mac[6:12]] = port
                destination = self.owner.get(mac[0:6])
                targets = [destination] if destination and destination != port else \
                    [p for p in self.sockets if p != port]
                due = time.monotonic() + self.delay_s
                with self.ready:
                    for target in targets:
                        self.sequence += 1
                        heapq.heappush(self.queue, (due, self.sequence, target, frame))
                    self.ready.notify()

    def send_forever(self) -> None:
        while self.running:
            with self.ready:
                while self.running and not self.queue:
                    self.ready.wait(0.2)
                if not self.queue:
                    continue
                due = self.queue[0][0]
                wait = due - time.monotonic()
                if wait > 0:
                    self.ready.wait(wait)
                    continue
                _, _, target, frame = heapq.heappop(self.queue)
            try:
                self.sockets[target].send(frame)
            except OSError:
                pass  # a full queue or a vanished port drops the frame, like a real link

    def stop(self, *_: object) -> None:
        self.running = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay added to every frame")
    parser.add_argument("ports", nargs="+")
    arguments = parser.parse_args()
    bridge = DelayBridge(arguments.ports, arguments.delay_ms / 1000)
    signal.signal(signal.SIGTERM, bridge.stop)
    signal.signal(signal.SIGINT, bridge.stop)
    sender = threading.Thread(target=bridge.send_forever, daemon=True)
    sender.start()
    print("bridge ready", flush=True)
    bridge.receive_forever()


if __name__ == "__main__":
    main()
