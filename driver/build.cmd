@echo off
rem build.cmd - build HotAddProbe.sys with the WDK from the command line.
rem
rem Runs on a Windows build box with either the EWDK (mount the ISO, run LaunchBuildEnv.cmd,
rem then this script) or Visual Studio 2022 + the WDK (from a Developer Command Prompt), or
rem Visual Studio 2022 with the WDK component and the WDK NuGet packages restored first:
rem   nuget restore driver\packages.config -PackagesDirectory driver\packages
rem Visual Studio needs the Spectre-mitigated MSVC libraries ("MSVC v143 - VS 2022 C++ x64/x86
rem Spectre-mitigated libs", Microsoft.VisualStudio.Component.VC.Runtimes.x86.x64.Spectre):
rem without them msbuild stops with MSB8040.
rem Usage:  build.cmd [Release or Debug, default Release] [analyze]
rem   analyze  also runs code analysis with the WDK's Driver Recommended Rules (SAL, IRQL);
rem            every finding is an error.
rem Output: driver\build\<Configuration>\HotAddProbe.sys and .pdb, unsigned
rem         (test-sign it with sign-test.ps1, see README.md).
setlocal

set "CONFIGURATION=%~1"
if "%CONFIGURATION%"=="" set "CONFIGURATION=Release"
if /i not "%CONFIGURATION%"=="Release" if /i not "%CONFIGURATION%"=="Debug" (
  echo build.cmd: unknown configuration "%CONFIGURATION%": use Release or Debug 1>&2
  exit /b 2
)
set "ANALYZE=false"
if /i "%~2"=="analyze" set "ANALYZE=true"

where msbuild.exe >nul 2>nul
if errorlevel 1 (
  echo build.cmd: msbuild.exe is not on PATH. Run this from the EWDK's LaunchBuildEnv.cmd prompt, 1>&2
  echo or from a Visual Studio Developer Command Prompt on a machine with the WDK installed. 1>&2
  exit /b 2
)

msbuild.exe "%~dp0HotAddProbe.vcxproj" /nologo /m /t:Rebuild /p:Configuration=%CONFIGURATION% /p:Platform=x64 /p:RunCodeAnalysis=%ANALYZE%
if errorlevel 1 (
  echo build.cmd: the build failed, see the msbuild output above. 1>&2
  exit /b 1
)
if not exist "%~dp0build\%CONFIGURATION%\HotAddProbe.sys" (
  echo build.cmd: msbuild succeeded but build\%CONFIGURATION%\HotAddProbe.sys is missing. 1>&2
  exit /b 1
)
echo build.cmd: built %~dp0build\%CONFIGURATION%\HotAddProbe.sys
exit /b 0
