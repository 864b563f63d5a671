"""The knowledge base (drugs, products, services, diagnoses) and the institutions.

Everything here is small (at most a few thousand rows); the arrays it exposes are
what the vectorised generators index into.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.simulate.config import ScaleConfig, mix64

# ---------------------------------------------------------------- regions

REGIONS: tuple[tuple[str, str], ...] = (
    ("320102", "玄武区"),
    ("320311", "泉山区"),
    ("320106", "鼓楼区"),
    ("320205", "锡山区"),
    ("320115", "江宁区"),
    ("320506", "吴中区"),
    ("320214", "新吴区"),
    ("320583", "昆山市"),
    ("321002", "广陵区"),
    ("320412", "武进区"),
)
"""Regions (统筹区) in the order they are used; the first four span three cities
(prefecture = first four digits), so "far" patients exist at every scale."""

# ---------------------------------------------------------------- drugs

GENDER_CODES = {None: 0, "M": 1, "F": 2}

# code, generic name, pack units, max units/day (0: none), gender, min age,
# max age, high value, red list, reference price per unit (yuan), split ok,
# origin (dom / imp / both), weight outpatient, weight pharmacy, weight inpatient
# fmt: off
_DRUGS: tuple[tuple[Any, ...], ...] = (
    ("XA10BAE001", "二甲双胍片", 48, 4, None, None, None, 0, 0, 0.25, 1, "dom", 5, 8, 2),
    ("XA10BFA002", "阿卡波糖片", 30, 6, None, None, None, 0, 0, 1.2, 1, "both", 2, 4, 1),
    ("XC08CAN003", "硝苯地平控释片", 28, 2, None, None, None, 0, 0, 0.95, 1, "both", 3, 6, 1),
    ("XC08CAA004", "苯磺酸氨氯地平片", 28, 2, None, None, None, 0, 0, 0.5, 1, "dom", 4, 7, 1),
    ("XC09CAV005", "缬沙坦胶囊", 28, 2, None, None, None, 0, 0, 1.1, 1, "dom", 2, 4, 1),
    ("XC10AAA006", "阿托伐他汀钙片", 28, 4, None, None, None, 0, 0, 0.7, 1, "both", 3, 6, 1),
    ("XB01ACA007", "阿司匹林肠溶片", 30, 3, None, None, None, 0, 0, 0.15, 1, "dom", 3, 6, 1),
    ("XJ01CAA008", "阿莫西林胶囊", 24, 8, None, None, None, 0, 0, 0.3, 1, "dom", 5, 4, 1),
    ("XJ01DCC009", "头孢克洛缓释片", 12, 4, None, None, None, 0, 0, 2.0, 1, "dom", 3, 2, 1),
    ("XM01AEB010", "布洛芬缓释胶囊", 20, 4, None, None, None, 0, 0, 0.5, 1, "dom", 4, 4, 1),
    ("XN02BEA011", "对乙酰氨基酚片", 20, 8, None, None, None, 0, 0, 0.1, 1, "dom", 3, 3, 1),
    ("XA07BCS012", "蒙脱石散", 10, 9, None, None, None, 0, 0, 1.0, 1, "dom", 2, 2, 0.5),
    ("XA02BCO013", "奥美拉唑肠溶胶囊", 14, 4, None, None, None, 0, 0, 0.8, 1, "dom", 3, 4, 2),
    ("XR06AXL014", "氯雷他定片", 12, 2, None, None, None, 0, 0, 1.5, 1, "both", 2, 3, 0),
    ("XR05XAE015", "小儿氨酚黄那敏颗粒", 12, 6, None, None, 14, 0, 0, 0.8, 1, "dom", 2, 2, 0),
    ("XR05CAF016", "小儿肺咳颗粒", 10, 9, None, None, 14, 0, 0, 1.2, 1, "dom", 1, 1, 0),
    ("XG04CBF017", "非那雄胺片", 10, 1, "M", None, None, 0, 0, 3.0, 1, "dom", 1, 2, 0),
    ("XG04CAT018", "盐酸坦索罗辛缓释胶囊", 10, 2, "M", None, None, 0, 0, 2.5, 1, "both", 1, 2, 0),
    ("XG03DAH019", "黄体酮软胶囊", 30, 4, "F", None, None, 0, 0, 3.5, 1, "imp", 1, 1, 0.5),
    ("XG03CAE020", "戊酸雌二醇片", 21, 2, "F", 18, None, 0, 0, 1.5, 1, "imp", 0.5, 0.5, 0),
    ("XJ01MAL021", "左氧氟沙星片", 10, 2, None, 18, None, 0, 0, 2.2, 1, "dom", 3, 2, 1),
    ("XL01EBO022", "甲磺酸奥希替尼片", 30, 1, None, None, None, 1, 0, 170.0, 0, "imp", 0.1, 0.3, 0.05),
    ("XL04ABA023", "阿达木单抗注射液", 1, 1, None, None, None, 1, 0, 1100.0, 0, "both", 0.05, 0.1, 0.02),
    ("XA10BJS024", "司美格鲁肽注射液", 1, 1, None, 18, None, 1, 0, 400.0, 0, "imp", 0.1, 0.3, 0),
    ("XL04AXL025", "来那度胺胶囊", 21, 1, None, None, None, 1, 0, 50.0, 0, "dom", 0.05, 0.15, 0.02),
    ("XL02BXA026", "醋酸阿比特龙片", 120, 4, "M", None, None, 1, 0, 15.0, 0, "both", 0.05, 0.15, 0.02),
    ("XL01EAI027", "甲磺酸伊马替尼片", 60, 8, None, None, None, 1, 0, 10.0, 0, "both", 0.05, 0.15, 0.02),
    ("XL04AAT028", "枸橼酸托法替布片", 28, 2, None, None, None, 1, 0, 18.0, 0, "dom", 0.05, 0.15, 0),
    ("XM01AXG029", "硫酸氨基葡萄糖胶囊", 24, 6, None, None, None, 0, 1, 1.8, 1, "dom", 1, 3, 0),
    ("XC04ABG030", "银杏叶提取物片", 24, 9, None, None, None, 0, 1, 1.2, 1, "both", 1, 2, 0),
    ("XC01EBF031", "复方丹参滴丸", 180, 30, None, None, None, 0, 1, 0.15, 1, "dom", 2, 3, 0.5),
    ("XA09AAP032", "胰激肽原酶肠溶片", 24, 12, None, None, None, 0, 1, 0.9, 1, "dom", 0.5, 1, 0),
    ("XA11HAV033", "维生素E软胶囊", 24, 4, None, None, None, 0, 0, 0.2, 1, "dom", 0.5, 2, 0),
    ("XC04ABY034", "银杏叶片", 24, 9, None, None, None, 0, 0, 0.3, 1, "dom", 0.5, 1, 0),
    ("XC01EBD035", "复方丹参片", 180, 9, None, None, None, 0, 0, 0.05, 1, "dom", 0.5, 1, 0),
    ("XJ01DDA036", "注射用头孢曲松钠", 1, 4, None, None, None, 0, 0, 8.0, 0, "dom", 0.5, 0, 5),
    ("XB05BBA037", "氯化钠注射液", 1, 6, None, None, None, 0, 0, 3.0, 0, "dom", 0.5, 0, 8),
    ("XA10AEG038", "甘精胰岛素注射液", 1, 1, None, None, None, 0, 0, 80.0, 0, "both", 0.5, 1.5, 1),
    ("XD06AXM039", "莫匹罗星软膏", 1, 0, None, None, None, 0, 0, 18.0, 0, "dom", 1, 2, 0.2),
    ("XN05CFZ040", "酒石酸唑吡坦片", 10, 1, None, 18, None, 0, 0, 3.5, 1, "imp", 1, 1, 0.3),
    ("XR05CBA041", "氨溴索口服溶液", 1, 1, None, None, None, 0, 0, 12.0, 0, "dom", 2, 2, 0.5),
)
# fmt: on

SUBSTITUTES: dict[str, str] = {
    "XM01AXG029": "XA11HAV033",
    "XC04ABG030": "XC04ABY034",
    "XC01EBF031": "XC01EBD035",
    "XA09AAP032": "XA11HAV033",
}
"""Red-list drug billed -> cheaper drug whose pack is really handed out (same pack units)."""

HOARDABLE: tuple[str, ...] = ("XL01EBO022", "XL04AXL025", "XL01EAI027", "XL04AAT028", "XL02BXA026")
"""High-value oral drugs used by the 回流药 rings (daily dosing makes "far beyond use" meaningful)."""

# ---------------------------------------------------------------- services

# code, name, gender, min age, max age, max times, period days, price (yuan),
# weight outpatient, weight inpatient
# fmt: off
_SERVICES: tuple[tuple[Any, ...], ...] = (
    ("110200001", "普通门诊诊查费", None, None, None, None, None, 10.0, 0, 0),
    ("120100001", "床位费", None, None, None, None, None, 50.0, 0, 0),
    ("120200001", "一级护理", None, None, None, None, None, 30.0, 0, 0),
    ("250101001", "血常规", None, None, None, None, None, 20.0, 4, 3),
    ("250102001", "尿常规", None, None, None, None, None, 10.0, 2, 2),
    ("250301001", "肝功能", None, None, None, 2, 30, 60.0, 2, 2),
    ("250302001", "血脂四项", None, None, None, 2, 90, 40.0, 2, 1),
    ("250304005", "糖化血红蛋白测定", None, None, None, 1, 90, 45.0, 0, 0),
    ("250403001", "C13尿素呼气试验", None, None, None, 1, 180, 150.0, 1, 0),
    ("250404001", "前列腺特异性抗原测定", "M", None, None, None, None, 80.0, 1, 0.5),
    ("270300001", "宫颈细胞学检查", "F", None, None, 1, 365, 120.0, 1, 0),
    ("210103001", "胸部CT平扫", None, None, None, 2, 30, 200.0, 1, 2),
    ("220302001", "彩色多普勒超声检查", None, None, None, None, None, 120.0, 2, 2),
    ("310701001", "常规心电图", None, None, None, None, None, 25.0, 2, 2),
    ("311201001", "骨密度测定", None, 40, None, 1, 365, 150.0, 0.5, 0),
    ("130400001", "儿童生长发育评估", None, None, 14, None, None, 60.0, 1, 0),
    ("340200001", "针灸", None, None, None, None, None, 30.0, 1, 0),
    ("340200002", "推拿", None, None, None, None, None, 40.0, 1, 0.3),
)
# fmt: on
SVC_CONSULT = "110200001"
SVC_BED = "120100001"
SVC_NURSING = "120200001"
SVC_HBA1C = "250304005"
SVC_BLOOD = "250101001"
SVC_ECG = "310701001"
INFLATABLE_SERVICES: tuple[str, ...] = ("340200001", "340200002", "220302001", "250101001")
"""Unrestricted, unlimited services whose quantity/price the anomalous settlements inflate."""

MATERIALS: tuple[tuple[str, str, float], ...] = (
    ("C14010000001", "一次性使用输液器", 5.0),
    ("C14020000002", "医用敷料", 12.0),
    ("C14030000003", "一次性静脉留置针", 18.0),
)

# ---------------------------------------------------------------- diagnoses

# ICD-10, weight, LOS min, LOS max, gender, min age, max age
# fmt: off
INPATIENT_DX: tuple[tuple[Any, ...], ...] = (
    ("I10", 6, 4, 9, None, 35, 120),
    ("E11.9", 5, 5, 10, None, 30, 120),
    ("J18.9", 8, 5, 12, None, 0, 120),
    ("I63.9", 5, 8, 18, None, 45, 120),
    ("K35.8", 3, 3, 7, None, 5, 120),
    ("N39.0", 3, 3, 7, None, 0, 120),
    ("J44.1", 4, 6, 14, None, 45, 120),
    ("I25.1", 5, 4, 10, None, 40, 120),
    ("K80.2", 3, 4, 9, None, 20, 120),
    ("S72.0", 2, 10, 20, None, 50, 120),
    ("C34.9", 2, 7, 16, None, 40, 120),
    ("O80", 3, 2, 5, "F", 20, 42),
    ("J06.9", 1, 2, 4, None, 0, 120),
    ("R51", 0.5, 2, 4, None, 10, 120),
    ("M54.5", 1, 3, 7, None, 18, 120),
)
# fmt: on
THIN_DX: tuple[str, ...] = ("J06.9", "R51", "M54.5")
OUTPATIENT_DX: tuple[str, ...] = (
    "J06.9", "I10", "E11.9", "K29.7", "M54.5", "R51", "J02.9", "L30.9", "N39.0", "K59.0",
)  # fmt: skip

# ---------------------------------------------------------------- makers

DOMESTIC_MAKERS = (
    "华润双鹤药业", "石药集团", "齐鲁制药", "扬子江药业", "江苏恒瑞医药", "正大天晴药业",
    "复星医药", "科伦药业", "广州白云山", "海正药业", "豪森药业", "百奥泰生物",
)  # fmt: skip
IMPORT_MAKERS = (
    ("阿斯利康", "500"), ("艾伯维", "030"), ("诺和诺德", "570"), ("默沙东", "030"),
    ("辉瑞", "030"), ("拜耳", "400"), ("诺华", "760"), ("赛诺菲", "300"), ("威玛舒培", "401"),
)  # fmt: skip

KINDS = ("hospital", "primary_care", "clinic", "pharmacy")
KIND_HOSPITAL, KIND_PRIMARY, KIND_CLINIC, KIND_PHARMACY = range(4)


def gtin_check_digit(body13: str) -> int:
    """GS1 mod-10 check digit of the first 13 digits of a GTIN-14."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(body13))
    return (10 - total % 10) % 10


@dataclass(frozen=True)
class Catalog:
    """Drugs, products, services, materials (tables plus numeric arrays)."""

    drugs: pd.DataFrame
    products: pd.DataFrame
    services: pd.DataFrame
    materials: pd.DataFrame
    # numeric views, indexed by drug / service / product position
    drug_pack: np.ndarray
    drug_max: np.ndarray
    drug_gender: np.ndarray
    drug_min_age: np.ndarray
    drug_max_age: np.ndarray
    drug_price: np.ndarray
    drug_split_ok: np.ndarray
    drug_high_value: np.ndarray
    drug_weights: np.ndarray  # (3, n_drugs): outpatient, inpatient, pharmacy
    drug_prod_start: np.ndarray
    drug_prod_count: np.ndarray
    svc_gender: np.ndarray
    svc_min_age: np.ndarray
    svc_max_age: np.ndarray
    svc_max_times: np.ndarray
    svc_period: np.ndarray
    svc_price: np.ndarray
    svc_weights: np.ndarray  # (3, n_services)
    mat_price: np.ndarray
    prod_drug: np.ndarray
    prod_imported: np.ndarray

    def drug(self, code: str) -> int:
        return int(np.flatnonzero(self.drugs["drug_code"].to_numpy() == code)[0])

    def service(self, code: str) -> int:
        return int(np.flatnonzero(self.services["service_code"].to_numpy() == code)[0])


def _opt(v: object, default: int = -1) -> int:
    return default if v is None or pd.isna(v) else int(v)  # type: ignore[call-overload]


def _gender(values: pd.Series) -> np.ndarray:
    return np.array([GENDER_CODES.get(None if pd.isna(v) else v, 0) for v in values], np.int8)


def build_catalog(rng: np.random.Generator) -> Catalog:
    """The drug catalog, its products (7-digit codes and GTIN-14s) and the services."""
    cols = (
        "drug_code", "generic_name", "pack_units", "max_units_per_day", "gender_restriction",
        "min_age", "max_age", "high_value", "red_list", "ref_price", "split_ok", "origin",
        "w_out", "w_pharm", "w_inp",
    )  # fmt: skip
    drugs = pd.DataFrame(list(_DRUGS), columns=list(cols))
    n_drugs = len(drugs)

    # products: 1-3 domestic 7-digit codes and/or 1-2 imported GTIN-14s per drug
    used7: set[str] = set()
    rows: list[tuple[str, int, str, bool]] = []
    for d, origin in enumerate(drugs["origin"]):
        if origin in ("imp", "both"):
            for _ in range(1 if origin == "both" else int(rng.integers(1, 3))):
                maker, prefix = IMPORT_MAKERS[int(rng.integers(len(IMPORT_MAKERS)))]
                body = (
                    str(int(rng.integers(0, 2)))
                    + prefix
                    + "".join(map(str, rng.integers(0, 10, 9)))
                )
                rows.append((body + str(gtin_check_digit(body)), d, maker, True))
        if origin in ("dom", "both"):
            for _ in range(int(rng.integers(1, 4))):
                while True:
                    code7 = "8" + "".join(map(str, rng.integers(0, 10, 6)))
                    if code7 not in used7:
                        used7.add(code7)
                        break
                maker = DOMESTIC_MAKERS[int(rng.integers(len(DOMESTIC_MAKERS)))]
                rows.append((code7, d, maker, False))
    products = pd.DataFrame(rows, columns=["product_code", "drug", "manufacturer", "imported"])
    products = products.sort_values("drug", kind="stable").reset_index(drop=True)
    prod_drug = products["drug"].to_numpy(np.int64)
    prod_start = np.searchsorted(prod_drug, np.arange(n_drugs))
    prod_count = np.bincount(prod_drug, minlength=n_drugs)
    products["drug_code"] = drugs["drug_code"].to_numpy()[prod_drug]

    scols = (
        "service_code", "name", "gender_restriction", "min_age", "max_age", "max_times",
        "period_days", "ref_price", "w_out", "w_inp",
    )  # fmt: skip
    services = pd.DataFrame(list(_SERVICES), columns=list(scols))
    materials = pd.DataFrame(list(MATERIALS), columns=["material_code", "name", "ref_price"])

    def cents(s: pd.Series) -> np.ndarray:
        return np.round(s.to_numpy(np.float64) * 100).astype(np.int64)

    gender = _gender(drugs["gender_restriction"])
    w = drugs[["w_out", "w_inp", "w_pharm"]].to_numpy(np.float64).T
    sw = services[["w_out", "w_inp", "w_out"]].to_numpy(np.float64).T
    return Catalog(
        drugs=drugs,
        products=products,
        services=services,
        materials=materials,
        drug_pack=drugs["pack_units"].to_numpy(np.int64),
        drug_max=drugs["max_units_per_day"].to_numpy(np.int64),
        drug_gender=gender,
        drug_min_age=np.array([_opt(v) for v in drugs["min_age"]], np.int64),
        drug_max_age=np.array([_opt(v, 999) for v in drugs["max_age"]], np.int64),
        drug_price=cents(drugs["ref_price"]),
        drug_split_ok=drugs["split_ok"].to_numpy(bool) & (drugs["pack_units"].to_numpy() >= 10),
        drug_high_value=drugs["high_value"].to_numpy(bool),
        drug_weights=w / w.sum(axis=1, keepdims=True),
        drug_prod_start=prod_start.astype(np.int64),
        drug_prod_count=prod_count.astype(np.int64),
        svc_gender=_gender(services["gender_restriction"]),
        svc_min_age=np.array([_opt(v) for v in services["min_age"]], np.int64),
        svc_max_age=np.array([_opt(v, 999) for v in services["max_age"]], np.int64),
        svc_max_times=np.array([_opt(v) for v in services["max_times"]], np.int64),
        svc_period=np.array([_opt(v) for v in services["period_days"]], np.int64),
        svc_price=cents(services["ref_price"]),
        svc_weights=sw / np.maximum(sw.sum(axis=1, keepdims=True), 1e-9),
        mat_price=cents(materials["ref_price"]),
        prod_drug=prod_drug,
        prod_imported=products["imported"].to_numpy(bool),
    )


# ---------------------------------------------------------------- institutions


@dataclass(frozen=True)
class Institutions:
    table: pd.DataFrame
    """institution_id, name, kind, level, region_code + internal columns."""
    kind: np.ndarray
    level: np.ndarray
    region: np.ndarray
    weight: np.ndarray
    anomalous: np.ndarray
    volume_outlier: np.ndarray
    price_factor_salt: int
    doc_start: np.ndarray
    doc_count: np.ndarray
    doctor_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.table)


_HOSPITAL_NAMES = {
    3: ("人民医院", "中心医院", "中西医结合医院", "第一医院"),
    2: ("第二人民医院", "中医院", "妇幼保健院", "第三人民医院"),
    1: ("第四人民医院", "康复医院", "骨科医院", "老年病医院"),
}
_LEVEL_WEIGHT = {(KIND_HOSPITAL, 3): 30.0, (KIND_HOSPITAL, 2): 12.0, (KIND_HOSPITAL, 1): 5.0}
_KIND_WEIGHT = {KIND_PRIMARY: 6.0, KIND_CLINIC: 2.0, KIND_PHARMACY: 3.0}
_DOCTORS = {(KIND_HOSPITAL, 3): 60, (KIND_HOSPITAL, 2): 25, (KIND_HOSPITAL, 1): 10}


def build_institutions(cfg: ScaleConfig, rng: np.random.Generator) -> Institutions:
    """Hospitals (levels 1-3), primary care, clinics and pharmacies per region.

    Marks a few clinics/pharmacies as anomalous (their behaviour is shaped by the
    background generator) and a few tertiary hospitals as benign volume outliers.
    """
    rows = []
    for r in range(cfg.n_regions):
        code, district = REGIONS[r]
        seq = 0

        def add(kind: int, level: int, name: str, *, _code: str = code, _r: int = r) -> None:
            nonlocal seq
            seq += 1
            letter = "HPCY"[kind]
            rows.append((f"{_code}{letter}{seq:03d}", name, kind, level, _r))

        for grade, count in zip((1, 2, 3), cfg.hospitals, strict=True):
            for i in range(count):
                add(KIND_HOSPITAL, grade, f"{district}{_HOSPITAL_NAMES[grade][i % 4]}")
        for i in range(cfg.primary_care):
            add(KIND_PRIMARY, int(rng.integers(0, 2)), f"{district}第{i + 1}社区卫生服务中心")
        for i in range(cfg.clinics):
            add(KIND_CLINIC, 0, f"{district}仁和诊所{i + 1}")
        for i in range(cfg.pharmacies):
            chain = ("老百姓", "益丰", "大参林", "国大", "同仁堂", "百姓缘")[i % 6]
            add(KIND_PHARMACY, 0, f"{chain}大药房{district}{i + 1}店")
    table = pd.DataFrame(
        rows, columns=["institution_id", "name", "kind_idx", "level", "region_idx"]
    )
    kind = table["kind_idx"].to_numpy(np.int8)
    level = table["level"].to_numpy(np.int8)
    region = table["region_idx"].to_numpy(np.int64)
    table["kind"] = [KINDS[k] for k in kind]
    table["region_code"] = [REGIONS[r][0] for r in region]
    weight = np.array(
        [
            _LEVEL_WEIGHT.get((k, lv), _KIND_WEIGHT.get(k, 1.0))
            for k, lv in zip(kind, level, strict=True)
        ]
    ) * rng.lognormal(0.0, 0.35, len(table))

    n = len(table)
    volume_outlier = np.zeros(n, bool)
    tertiary = np.flatnonzero((kind == KIND_HOSPITAL) & (level == 3))
    for i in rng.choice(tertiary, size=min(cfg.volume_outliers, len(tertiary)), replace=False):
        volume_outlier[i] = True
        weight[i] *= 4.0
    anomalous = np.zeros(n, bool)
    small = np.flatnonzero((kind == KIND_CLINIC) | (kind == KIND_PHARMACY))
    for i in rng.choice(small, size=cfg.anomalous_institutions, replace=False):
        anomalous[i] = True
        weight[i] *= 1.5

    docs = np.array(
        [
            0 if k == KIND_PHARMACY else _DOCTORS.get((k, lv), 4 if k == KIND_PRIMARY else 2)
            for k, lv in zip(kind, level, strict=True)
        ]
    )
    docs = np.where(docs > 0, np.maximum(1, np.round(docs * cfg.doctors_scale)), 0).astype(np.int64)
    doc_start = np.concatenate([[0], np.cumsum(docs)[:-1]]).astype(np.int64)
    doctor_ids = np.array(
        [
            f"{iid}D{j + 1:03d}"
            for iid, c in zip(table["institution_id"], docs, strict=True)
            for j in range(c)
        ],
        dtype=object,
    )
    return Institutions(
        table=table,
        kind=kind,
        level=level,
        region=region,
        weight=weight,
        anomalous=anomalous,
        volume_outlier=volume_outlier,
        price_factor_salt=int(rng.integers(1 << 62)),
        doc_start=doc_start,
        doc_count=docs,
        doctor_ids=doctor_ids,
    )


def price_factor_permille(
    inst: np.ndarray, item_key: np.ndarray, salt: int, anomalous: np.ndarray
) -> np.ndarray:
    """Institution x item price factor (per mille): 920..1080 around the reference price.

    Anomalous institutions sit at the very top of the range (1070..1080).
    """
    h = mix64(np.asarray(inst, np.int64) * 100_003 + np.asarray(item_key, np.int64), salt)
    normal = 920 + (h % np.uint64(161)).astype(np.int64)
    top = 1070 + (h % np.uint64(11)).astype(np.int64)
    return np.where(anomalous[inst], top, normal)
