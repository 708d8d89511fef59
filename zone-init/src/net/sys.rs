//! The interface and route ioctls the zone's network setup uses (IPv4: `SIOCSIFHWADDR`, `SIOCSIFADDR`,
//! `SIOCSIFNETMASK`, `SIOCADDRT`), each on one `struct ifreq` or `struct rtentry` that lives for the call.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd as _, OwnedFd};

use nix::errno::Errno;

/// `struct rtentry` of the kernel's `include/uapi/linux/route.h` (libc declares it for musl only).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn socket() -> Result<OwnedFd, Errno> {
    nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
}

/// A `struct ifreq` naming `name` (NUL-terminated), all else zero.
fn ifreq(name: &str) -> Result<libc::ifreq, Errno> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid (empty) value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= req.ifr_name.len() || name.contains('\0') {
        return Err(Errno::EINVAL);
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// An IPv4 `struct sockaddr` (a `sockaddr_in` in its generic form, as the ioctls take it).
fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain old data; the kernel reads the generic
    // sockaddr as a sockaddr_in because its family says AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Sets the MAC address of `name` (the interface must be down for most drivers).
pub(crate) fn set_mac(name: &str, mac: [u8; 6]) -> Result<(), Errno> {
    let sock = socket()?;
    let mut req = ifreq(name)?;
    let mut hw: libc::sockaddr = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
    hw.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in hw.sa_data.iter_mut().zip(mac) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = hw;
    // SAFETY: SIOCSIFHWADDR reads one `struct ifreq` (name and hwaddr) through the pointer, which points at
    // `req`, alive and initialised for the whole call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFHWADDR, &req as *const libc::ifreq) }).map(drop)
}

/// Sets the IPv4 address of `name` and its netmask (`prefix` bits).
pub(crate) fn set_ipv4(name: &str, addr: Ipv4Addr, prefix: u8) -> Result<(), Errno> {
    let sock = socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_v4(addr);
    // SAFETY: SIOCSIFADDR reads one `struct ifreq` (name and addr) through the pointer, which points at
    // `req`, alive and initialised for the whole call.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFADDR, &req as *const libc::ifreq) })?;
    req.ifr_ifru.ifru_netmask = sockaddr_v4(mask(prefix)?);
    // SAFETY: as above, with the netmask member set.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &req as *const libc::ifreq) }).map(drop)
}

/// Adds an IPv4 route to `dst`/`prefix` out of `dev`, through `gateway` if given.
pub(crate) fn add_route_v4(dev: &str, dst: Ipv4Addr, prefix: u8, gateway: Option<Ipv4Addr>) -> Result<(), Errno> {
    let sock = socket()?;
    let mut dev_name = ifreq(dev)?.ifr_name;
    let mut flags = libc::RTF_UP;
    if gateway.is_some() {
        flags |= libc::RTF_GATEWAY;
    }
    let route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(dst),
        rt_gateway: sockaddr_v4(gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)),
        rt_genmask: sockaddr_v4(mask(prefix)?),
        rt_flags: flags,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev_name.as_mut_ptr(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads one `struct rtentry` through the pointer (RtEntry mirrors its layout), and the
    // NUL-terminated device name `rt_dev` points into `dev_name`; both live until the call returns.
    Errno::result(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &route as *const RtEntry) }).map(drop)
}

fn mask(prefix: u8) -> Result<Ipv4Addr, Errno> {
    match prefix {
        0 => Ok(Ipv4Addr::UNSPECIFIED),
        1..=32 => Ok(Ipv4Addr::from(u32::MAX << (32 - u32::from(prefix)))),
        _ => Err(Errno::EINVAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_from_prefixes() {
        assert_eq!(mask(0), Ok(Ipv4Addr::UNSPECIFIED));
        assert_eq!(mask(16), Ok(Ipv4Addr::new(255, 255, 0, 0)));
        assert_eq!(mask(23), Ok(Ipv4Addr::new(255, 255, 254, 0)));
        assert_eq!(mask(32), Ok(Ipv4Addr::BROADCAST));
        assert_eq!(mask(33), Err(Errno::EINVAL));
    }

    #[test]
    fn rtentry_has_the_kernel_s_size() {
        // x86_64: 8 + 3 * 16 + 2 + 2 + 4 (padding) + 8 + 8 + 2 + 6 (padding) + 8 + 8 + 8 + 2 + 6 (padding).
        #[cfg(target_arch = "x86_64")]
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }

    #[test]
    fn interface_names_must_fit() {
        assert!(ifreq("eth0").is_ok());
        assert_eq!(ifreq("").err(), Some(Errno::EINVAL));
        assert_eq!(ifreq("a-very-long-name").err(), Some(Errno::EINVAL));
    }
}
