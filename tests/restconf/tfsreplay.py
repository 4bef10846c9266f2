"""The HTTP behaviour of ETSI TeraFlowSDN's QKD device driver (src/device/service/drivers/qkd:
QKDDriver2 + Tools2) and its QKD service handler, replayed request by request with httpx:
plain HTTP, `Accept: */*`, `Content-Type: application/json` on writes, trailing slashes, and
the same parsing of each answer the driver does (so a test sees what TFS would make of it).
Written from the driver's behaviour; none of its code is here."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx

ROOT = "/restconf/data/etsi-qkd-sdn-node:qkd_node"
HEADERS = {"Accept": "*/*", "User-Agent": "python-requests/2.32.3", "Accept-Encoding": "gzip, deflate"}


class TfsDevice:
    """One QKD device as TFS's driver sees it (address:port, plain HTTP)."""

    def __init__(self, name: str, address: str, headers: dict[str, str] | None = None):
        """`headers`: the driver's `headers` setting (`_connect/settings`). Like the driver, they go
        with its reads only: `Tools2.create_connectivity_link` sends none of them."""
        self.name = name
        extra = dict(headers or {})

        def reads_only(request: httpx.Request) -> None:
            if request.method != "GET":
                for k in extra:
                    request.headers.pop(k, None)

        self.http = httpx.Client(base_url=f"http://{address}", headers={**HEADERS, **extra}, timeout=30.0,
                                 event_hooks={"request": [reads_only]})
        self.config_rules: dict[str, Any] = {}
        self.endpoints: list[str] = []

    # -- Connect / GetInitialConfig: GET …/etsi-qkd-sdn-node:qkd_node, raise_for_status, .json()

    def connect(self) -> list[tuple[str, Any]]:
        r = self.http.get(ROOT)
        r.raise_for_status()
        data = r.json()
        return [("qkd_node", data.get("qkd_node", {}))] if isinstance(data, dict) else []

    # -- GetConfig over ALL_RESOURCE_KEYS, one fetch each (Tools2.config_getter)

    def onboard(self) -> None:
        for iface in self._interfaces():  # __endpoints__: qkdi_att_point device:port names the endpoint
            att = iface.get("qkdi_att_point", {})
            if "device" in att and "port" in att:
                self.endpoints.append(f"{att['device']}:{att['port']}")
        for iface in self._interfaces():  # __interfaces__
            self.config_rules[f"/interface[{iface['qkdi_id']}]"] = iface
        for _key in ("__network_instances__", "__links__"):  # links: r.json().get('qkd_links', [])
            r = self.http.get(f"{ROOT}/qkd_links/")
            r.raise_for_status()
            for link in r.json().get("qkd_links", []):
                if isinstance(link, dict) and link.get("qkdl_type") in ("PHYS", "VIRT"):
                    self.config_rules[f"/link[{link.get('qkdl_id')}]"] = link
        r = self.http.get(f"{ROOT}/qkd_applications/")  # .get('qkd_applications', {}).get('qkd_app', [])
        r.raise_for_status()
        for app in r.json().get("qkd_applications", {}).get("qkd_app", []):
            self.config_rules[f"/app[{app['app_id']}]"] = app
        r = self.http.get(f"{ROOT}/qkdn_capabilities/")
        r.raise_for_status()
        self.config_rules["__capabilities__"] = r.json()
        r = self.http.get(f"{ROOT}/")  # __node__: the node answer without its four sub-containers
        r.raise_for_status()
        node = r.json()
        for sub in ("qkdn_capabilities", "qkd_applications", "qkd_interfaces", "qkd_links"):
            node.pop(sub, None)
        self.config_rules["__node__"] = node

    def _interfaces(self) -> list[dict[str, Any]]:
        r = self.http.get(f"{ROOT}/qkd_interfaces/")
        r.raise_for_status()
        data = r.json()
        if isinstance(data.get("qkd_interfaces"), dict):  # the mock's wrapped shape
            return data["qkd_interfaces"].get("qkd_interface", [])
        return data.get("qkd_interface", [])

    @property
    def qkdn_id(self) -> str:
        return self.config_rules["__node__"]["qkdn_id"]  # what the service handler reads

    def interface_towards(self, endpoint: str) -> int:
        """The service handler's lookup: `/interface` rules whose qkdi_att_point.uuid is the
        endpoint. The driver never sets that uuid on /interface rules, so TFS finds none
        and sends 0 (its initial value)."""
        for value in self.config_rules.values():
            if isinstance(value, dict) and value.get("qkdi_att_point", {}).get("uuid") == endpoint:
                return int(value["qkdi_id"])
        return 0

    # -- SetConfig of a '/link' rule: create_connectivity_link POSTs one wrapped qkd_link

    def create_link(self, link_uuid: str, src: str, src_if: Any, dst: str, dst_if: Any,
                    virt_prev_hop: str | None = None, virt_next_hops: list[str] | None = None,
                    virt_bandwidth: int | None = None) -> httpx.Response:
        qkd_link: dict[str, Any] = {
            "qkdl_id": link_uuid,
            "qkdl_type": "etsi-qkd-node-types:" + ("VIRT" if virt_prev_hop or virt_next_hops else "PHYS"),
            "qkdl_local": {"qkdn_id": src, "qkdi_id": src_if},
            "qkdl_remote": {"qkdn_id": dst, "qkdi_id": dst_if},
        }
        if virt_prev_hop or virt_next_hops:
            qkd_link["virt_prev_hop"] = virt_prev_hop
            qkd_link["virt_next_hop"] = virt_next_hops or []
            qkd_link["virt_bandwidth"] = virt_bandwidth
        return self.http.post(f"{ROOT}/qkd_links/", json={"qkd_links": {"qkd_link": [qkd_link]}})

    def close(self) -> None:
        self.http.close()


def service_links(devices: list[TfsDevice], endpoints: list[tuple[int, str]]) -> list[tuple[int, dict[str, Any]]]:
    """The '/link' config rules TFS's QKD service handler gives each device of a path
    (endpoints: (device index, endpoint name) in path order, two per device: ingress and
    egress, the service's own endpoints at both ends): one PHYS link
    per direction and fibre, a fresh qkdl_id for each end; over three or more devices also the
    two VIRT links end to end. Returns (device index, rule value) in the order TFS sends them."""
    path = [endpoints[i][0] for i in range(0, len(endpoints), 2)]
    virtual = len(endpoints) > 4
    ids = [devices[d].qkdn_id for d in path]
    ifs = []
    for k, d in enumerate(path):
        left = endpoints[2 * k][1] if k > 0 else None
        right = endpoints[2 * k + 1][1] if 2 * k + 2 < len(endpoints) else None
        ifs.append([devices[d].interface_towards(left) if left else 0,
                    devices[d].interface_towards(right) if right else 0])
    src_dst, dst_src = str(uuid.uuid4()), str(uuid.uuid4())
    out: list[tuple[int, dict[str, Any]]] = []
    for k, d in enumerate(path):
        if k < len(path) - 1:
            lid = str(uuid.uuid4()) if virtual else src_dst
            out.append((d, {"uuid": lid, "src_qkdn_id": ids[k], "src_interface_id": ifs[k][1],
                            "dst_qkdn_id": ids[k + 1], "dst_interface_id": ifs[k + 1][0]}))
        if k > 0:
            lid = str(uuid.uuid4()) if virtual else dst_src
            out.append((d, {"uuid": lid, "src_qkdn_id": ids[k], "src_interface_id": ifs[k][0],
                            "dst_qkdn_id": ids[k - 1], "dst_interface_id": ifs[k - 1][1]}))
        if virtual and k < len(path) - 1:
            out.append((d, {"uuid": src_dst, "src_qkdn_id": ids[0], "src_interface_id": ifs[0][1],
                            "dst_qkdn_id": ids[-1], "dst_interface_id": ifs[-1][0],
                            "virt_prev_hop": ids[k - 1] if k > 0 else None, "virt_next_hops": ids[k + 1:],
                            "virt_bandwidth": 0}))
        if virtual and k > 0:
            out.append((d, {"uuid": dst_src, "src_qkdn_id": ids[-1], "src_interface_id": ifs[-1][0],
                            "dst_qkdn_id": ids[0], "dst_interface_id": ifs[0][1],
                            "virt_prev_hop": ids[k + 1] if k < len(path) - 1 else None,
                            "virt_next_hops": ids[k - 1::-1], "virt_bandwidth": 0}))
    return out


def apply_rule(device: TfsDevice, rule: dict[str, Any]) -> httpx.Response:
    """QKDDriver2.SetConfig for one '/link' rule (it ignores the answer beyond raise_for_status)."""
    return device.create_link(rule["uuid"], rule["src_qkdn_id"], rule["src_interface_id"], rule["dst_qkdn_id"],
                              rule["dst_interface_id"], rule.get("virt_prev_hop"), rule.get("virt_next_hops"),
                              rule.get("virt_bandwidth"))


def unkeyed(devices: list[TfsDevice], association: str, timeout: float = 90) -> list[str]:
    """Waits until every device's pool of `association` holds a key (strict RESTCONF, as an
    operator checks); the names of those still without one after `timeout`."""
    deadline = time.monotonic() + timeout
    pending = {d.name: d for d in devices}
    while pending and time.monotonic() < deadline:
        for name, d in sorted(pending.items()):
            r = d.http.get(f"{ROOT}/sdqkd-node-ext:sdqkd-key-store/pool={association}/stored-keys",
                           headers={"Accept": "application/yang-data+json"})
            if r.status_code == 200 and int(r.json()["sdqkd-node-ext:stored-keys"]) > 0:
                del pending[name]
        time.sleep(0.5)
    return sorted(pending)
